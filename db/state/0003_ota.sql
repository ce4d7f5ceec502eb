-- Firmware upgrades (OTA): each device's module versions and its current upgrade job.

-- The firmware version of one module of a device ('' = the default module), as last known:
-- from the configuration, the device's plugin, the API or a finished upgrade.
CREATE TABLE ota_version (
    product_key TEXT NOT NULL,
    device_name TEXT NOT NULL,
    module TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL,
    source TEXT NOT NULL,              -- config, plugin, api, ota
    updated_at INTEGER NOT NULL,       -- seconds since the epoch
    PRIMARY KEY (product_key, device_name, module)
);

-- One job per device and module: a newer job replaces the row. notice is the job as the
-- platform described it, normalized (see daemon/ota.c), and is parsed again at start-up by the
-- same parser as the platform's messages.
CREATE TABLE ota_job (
    product_key TEXT NOT NULL,
    device_name TEXT NOT NULL,
    module TEXT NOT NULL DEFAULT '',
    job_id INTEGER NOT NULL UNIQUE,
    from_version TEXT,
    to_version TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('offered', 'downloading', 'verifying', 'ready',
                                         'applying', 'done', 'failed')),
    notice TEXT NOT NULL CHECK (json_valid(notice)),
    progress INTEGER NOT NULL DEFAULT 0,   -- percent
    step INTEGER NOT NULL DEFAULT 0,       -- the negative step reported when failed
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (product_key, device_name, module)
);
