-- Schema version 3 (PostgreSQL): the intent's webhook target and where each leg's media was
-- latched. The twin of ../0003_notify_url_latched.sql.

ALTER TABLE calls ADD COLUMN notify_url TEXT;
ALTER TABLE calls ADD COLUMN latched_a TEXT;
ALTER TABLE calls ADD COLUMN latched_b TEXT;
