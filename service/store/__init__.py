"""Everything that speaks Redis: the connection, the scripts of `lua/`, the keys, and the
stores over them. Imports no FastAPI and no aiohttp.

Nothing is re-exported here: `service.settings` imports `service.store.keys`, so an import of
`Store` in this file would import the settings module from itself (import `Store` from
`service.store.watches`)."""
