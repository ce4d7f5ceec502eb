-- The outbox: messages waiting to reach the cloud, oldest first per device.
--
-- device holds the per-device counters (count, bytes, dropped, expired) that outbox.c updates in
-- the same transaction as the messages they count, so opening a store of any size reads this
-- small table and never scans message. seq is global and only grows (next_seq in meta keeps it
-- growing across an emptied store); (device_id, seq) is the per-device FIFO index.
CREATE TABLE device (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,          -- "productKey/deviceName"
    count INTEGER NOT NULL DEFAULT 0,  -- queued messages
    bytes INTEGER NOT NULL DEFAULT 0,  -- sum of message.size
    dropped INTEGER NOT NULL DEFAULT 0,-- removed by the byte cap (drop-oldest)
    expired INTEGER NOT NULL DEFAULT 0 -- removed by the TTL
);

CREATE TABLE message (
    seq INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES device(id),
    created_ms INTEGER NOT NULL,       -- wall clock, ms since the epoch
    qos INTEGER NOT NULL,
    size INTEGER NOT NULL,             -- bytes of topic + payload, what the caps count
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);

CREATE INDEX message_device_seq ON message(device_id, seq);

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO meta(key, value) VALUES ('next_seq', 1);
