"""Status rules for the job APIs people watch, one preset each (`Upstream(preset=...)`).

Each preset names the body it assumes (`assumes`: one example per state) and the provider
documentation it follows (`docs`). A rule's `path` and the `progress`, `eta`, `error` and
`result` fields are JMESPath expressions over the JSON body; see `client.upstream.Upstream` for
the rule language. `vtwatch` is the default and reads the original protocol exactly.
"""

from __future__ import annotations

from typing import Any

Preset = dict[str, Any]

PRESETS: dict[str, Preset] = {
    "vtwatch": {
        "description": 'the original protocol: GET /status -> {"result": ...}',
        "docs": "docs/client.md",
        "rules": [
            {"path": "result", "equals": "completed", "then": "completed"},
            {"path": "result", "equals": "error", "then": "error"},
            {"path": "result", "equals": "pending", "then": "pending"},
        ],
        "progress": "progress",
        "eta": "eta_seconds",
        "assumes": {
            "pending": {"result": "pending", "progress": 40, "eta_seconds": 12},
            "completed": {"result": "completed"},
            "error": {"result": "error"},
        },
    },
    "heygen": {
        "description": "HeyGen video status (GET /v1/video_status.get?video_id=...)",
        "docs": "https://docs.heygen.com/reference/video-status",
        "rules": [
            {"path": "data.status", "equals": "completed", "then": "completed"},
            {"path": "data.status", "equals": "failed", "then": "error"},
            {"path": "data.status", "in": ["waiting", "pending", "processing"], "then": "pending"},
        ],
        "error": "data.error.message || data.error.detail",
        "result": "data.video_url",
        "assumes": {
            "pending": {"code": 100, "data": {"video_id": "v1", "status": "processing"}},
            "completed": {
                "code": 100,
                "data": {"video_id": "v1", "status": "completed", "video_url": "https://..."},
            },
            "error": {
                "code": 100,
                "data": {
                    "video_id": "v1",
                    "status": "failed",
                    "error": {"code": 40119, "message": "Video is too long", "detail": "..."},
                },
            },
        },
    },
    "elevenlabs-dubbing": {
        "description": "ElevenLabs dubbing project (GET /v1/dubbing/{dubbing_id})",
        "docs": "https://elevenlabs.io/docs/api-reference/dubbing/get",
        "rules": [
            {"path": "status", "equals": "dubbed", "then": "completed"},
            {"path": "status", "equals": "failed", "then": "error"},
            {"path": "status", "in": ["dubbing", "pending", "queued"], "then": "pending"},
        ],
        "error": "error",
        "result": "{dubbing_id: dubbing_id, target_languages: target_languages}",
        "assumes": {
            "pending": {"dubbing_id": "d1", "status": "dubbing", "target_languages": ["es"]},
            "completed": {"dubbing_id": "d1", "status": "dubbed", "target_languages": ["es"]},
            "error": {"dubbing_id": "d1", "status": "failed", "error": "audio too short"},
        },
    },
    "synthesia": {
        "description": "Synthesia video (GET /v2/videos/{video_id})",
        "docs": "https://docs.synthesia.io/reference/retrieve-a-video",
        "rules": [
            {"path": "status", "equals": "complete", "then": "completed"},
            {"path": "status", "in": ["error", "rejected"], "then": "error"},
            {"path": "status", "in": ["in_progress", "pending"], "then": "pending"},
        ],
        "error": "error || message || status",
        "result": "download",
        "assumes": {
            "pending": {"id": "s1", "status": "in_progress"},
            "completed": {"id": "s1", "status": "complete", "download": "https://..."},
            "error": {"id": "s1", "status": "rejected"},
        },
    },
    "assemblyai": {
        "description": "AssemblyAI transcript (GET /v2/transcript/{transcript_id})",
        "docs": "https://www.assemblyai.com/docs/api-reference/transcripts/get",
        "rules": [
            {"path": "status", "equals": "completed", "then": "completed"},
            {"path": "status", "equals": "error", "then": "error"},
            {"path": "status", "in": ["queued", "processing"], "then": "pending"},
        ],
        "error": "error",
        "result": "{id: id, text: text}",
        "assumes": {
            "pending": {"id": "t1", "status": "processing"},
            "completed": {"id": "t1", "status": "completed", "text": "Hello world."},
            "error": {"id": "t1", "status": "error", "error": "Download error"},
        },
    },
    "google-lro": {
        "description": "Google Cloud long-running operation (GET .../operations/{name})",
        "docs": "https://google.aip.dev/151",
        "rules": [
            {"path": "error", "exists": True, "then": "error"},  # set only once done (AIP-151)
            {"path": "done", "equals": True, "then": "completed"},
            {"path": "done || `false`", "equals": False, "then": "pending"},
        ],
        "progress": "metadata.progressPercent || metadata.progress_percent",
        "error": "error.message",
        "result": "response",
        "assumes": {
            "pending": {"name": "operations/1", "metadata": {"progressPercent": 40}},
            "completed": {"name": "operations/1", "done": True, "response": {"uri": "gs://..."}},
            "error": {
                "name": "operations/1",
                "done": True,
                "error": {"code": 13, "message": "internal error"},
            },
        },
    },
    "azure-lro": {
        "description": "Azure long-running operation status monitor (GET the Operation-Location)",
        "docs": "https://github.com/microsoft/api-guidelines/blob/vNext/azure/Guidelines.md"
        "#long-running-operations--jobs",
        "rules": [
            # Some Azure services answer these in lower case (Speech, Document Intelligence).
            {"path": "status", "in": ["Succeeded", "succeeded"], "then": "completed"},
            {"path": "status", "in": ["Failed", "Canceled", "failed", "canceled"], "then": "error"},
            {
                "path": "status",
                "in": ["NotStarted", "Running", "notStarted", "running"],
                "then": "pending",
            },
        ],
        "progress": "percentComplete",
        "error": "error.message || status",
        "result": "result",
        "assumes": {
            "pending": {"id": "op1", "status": "Running", "percentComplete": 40},
            "completed": {"id": "op1", "status": "Succeeded", "result": {"url": "https://..."}},
            "error": {
                "id": "op1",
                "status": "Failed",
                "error": {"code": "InvalidInput", "message": "bad input"},
            },
        },
    },
}
DEFAULT_PRESET = "vtwatch"
