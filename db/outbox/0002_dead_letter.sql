-- Messages the platform refuses (a topic the device may not publish on, or a session closed right
-- after the message, again and again) are moved here with the reason instead of blocking their
-- device's queue for ever. Kept for the operator (status shows the count and the last one); the
-- daemon never sends them again.
CREATE TABLE dead_letter (
    seq INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL REFERENCES device(id),
    created_ms INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    dead_ms INTEGER NOT NULL           -- wall clock when it was set aside
);

CREATE INDEX dead_letter_device ON dead_letter(device_id, seq);
