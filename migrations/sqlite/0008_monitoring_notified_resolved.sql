-- Whether an alert's resolved notification has reached every receiver (or was not due):
-- set only after delivery, so that a replica taking over from a leader that stopped with
-- it queued sends it. Alerts stored before were marked when queued: taken as sent.
ALTER TABLE monitoring_alerts ADD COLUMN notified_resolved BOOLEAN NOT NULL DEFAULT 1;
