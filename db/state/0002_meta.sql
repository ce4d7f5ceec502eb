-- Small facts the daemon keeps about itself, key → integer.
-- outbox_identity: the random identity of the outbox this state belongs to (the outbox keeps the
--   same number in its own meta table); outbox_seq: a seq the outbox is known to have committed
--   (written at most once a second while messages are queued, and at a clean stop). A start that
--   finds the outbox missing, emptied, of another identity or behind outbox_seq refuses to go on
--   (lost messages) unless told --accept-store-loss.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
