-- Schema version 3: what a record keeps besides the SPEC's list — the intent's webhook target
-- (makecall's notify_url, for the webhooks' redelivery after a restart) and where each leg's
-- media was latched (ip:port as text; an operator's first question about one-way audio).
-- Added columns are NULL in the records written before: readers treat NULL as "not known".

ALTER TABLE calls ADD COLUMN notify_url TEXT;
ALTER TABLE calls ADD COLUMN latched_a TEXT;
ALTER TABLE calls ADD COLUMN latched_b TEXT;
