-- Schema version 6 (PostgreSQL): a call's `data` as its UTF-8 bytes. makecall's `data` is an
-- opaque string (SPEC.md), so it may hold the NUL character (JSON's "\u0000"), which a
-- PostgreSQL TEXT value cannot: such a record was refused by the database and lost. The twin
-- of ../0006_data_bytes.sql, which changes nothing (SQLite's TEXT holds NUL).

ALTER TABLE calls ALTER COLUMN data TYPE BYTEA USING convert_to(data, 'UTF8');
