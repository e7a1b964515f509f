-- Run by test_psql_parity.py directly against PostgreSQL and through sluice; outputs must match.
SELECT 1 AS one, 'two' AS two, NULL AS nothing;
SELECT 1 AS a \; SELECT 2 AS b \; SELECT 3 AS c;
DROP TABLE IF EXISTS parity_t;
CREATE TABLE parity_t (id int PRIMARY KEY, name text, data bytea, note text);
INSERT INTO parity_t VALUES
  (1, 'héllo wörld ✓ 日本語 🚀', '\xdeadbeef00ff', NULL),
  (2, '', '\x', 'tab	and "quotes" and \backslash'),
  (3, NULL, NULL, NULL);
SELECT * FROM parity_t ORDER BY id;
SELECT id, encode(data, 'base64'), length(name), name IS NULL FROM parity_t ORDER BY id;
SELECT 1/0;
SELECT 'after an error' AS still_working;
SELECT * FROM no_such_table;
SELECT 'after another error' AS still_working;
BEGIN;
INSERT INTO parity_t VALUES (4, 'rolled back', NULL, NULL);
SELECT count(*) AS inside FROM parity_t;
ROLLBACK;
SELECT count(*) AS after_rollback FROM parity_t;
BEGIN;
SELECT 1/0;
SELECT 1;
ROLLBACK;
BEGIN;
SAVEPOINT s1;
INSERT INTO parity_t VALUES (5, 'savepoint', NULL, NULL);
ROLLBACK TO s1;
COMMIT;
SELECT count(*) AS after_savepoint FROM parity_t;
DO $$ BEGIN RAISE NOTICE 'notice from plpgsql: %', 42; RAISE WARNING 'a warning'; END $$;
SET client_min_messages = debug1;
RESET client_min_messages;
COPY parity_t (id, name, data, note) FROM STDIN;
10	copied ☃	\\x0102	\N
11	second	\N	note
\.
\copy parity_t TO '/tmp/sluice-parity.csv' CSV
CREATE TABLE parity_copy (LIKE parity_t);
\copy parity_copy FROM '/tmp/sluice-parity.csv' CSV
SELECT * FROM parity_copy ORDER BY id;
\copy (SELECT id, name FROM parity_t ORDER BY id) TO STDOUT
LISTEN parity_chan;
NOTIFY parity_chan, 'payload one';
SELECT pg_notify('parity_chan', 'payload ✓ two');
UNLISTEN parity_chan;
SELECT E'line1\nline2' AS multiline, '{1,2,NULL}'::int[] AS arr, '{"a": [1, null]}'::jsonb AS doc;
SELECT x, x::text::numeric * 1.5 FROM generate_series(-2, 2) x;
SHOW client_encoding;
DROP TABLE parity_t, parity_copy;
