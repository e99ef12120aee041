"""The FastAPI app (`service.api.app.create_app`): its routes, dependencies, middleware and
schemas. Imports `service.store`, never `worker`.

Nothing is re-exported here, so that importing one module of the package (a schema) does not
import the whole app."""
