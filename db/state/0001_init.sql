-- The daemon's own state: dynamic-registration results and devices added through the API.

-- One row per device registered dynamically. Either device_secret (one product, one secret,
-- pre-registered) or client_id + device_token (pre-registration-free) is set.
CREATE TABLE registration (
    product_key TEXT NOT NULL,
    device_name TEXT NOT NULL,
    device_secret TEXT,
    client_id TEXT,
    device_token TEXT,
    registered_at INTEGER NOT NULL,    -- seconds since the epoch
    PRIMARY KEY (product_key, device_name),
    CHECK (device_secret IS NOT NULL OR (client_id IS NOT NULL AND device_token IS NOT NULL))
);

-- Devices added at runtime; config is the JSON object the API received.
CREATE TABLE runtime_device (
    product_key TEXT NOT NULL,
    device_name TEXT NOT NULL,
    config TEXT NOT NULL CHECK (json_valid(config)),
    added_at INTEGER NOT NULL,
    PRIMARY KEY (product_key, device_name)
);
