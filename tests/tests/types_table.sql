SET timezone = 'UTC';
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TYPE pair AS (a int, b text);
CREATE TABLE types (
    id bigint PRIMARY KEY, i int, s smallint, n numeric, r real, d double precision,
    dn double precision, di double precision, b boolean, tx text, vc varchar(10), by bytea,
    u uuid, dt date, ts timestamp, tz timestamptz, tzi timestamptz, iv interval, j json,
    jb jsonb, arr int[], tarr text[], e mood, c pair, nul text);
INSERT INTO types VALUES
 (1, -7, 3, 123456789012345678901234567890.000000001, 1.5, 0.1, 'NaN', '-Infinity', true,
  E'h\u00e9llo "q" \\ \n tab\there ☃ 🎉', 'abc', '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '2024-02-29', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+02', 'infinity',
  '1 year 2 mons 3 days 04:05:06', '{"b": 1, "a": [1, 2]}', '{"b": 1, "a": [1, 2.50]}',
  '{1,2,NULL}', '{"a,b","c\"d"}', 'happy', ROW(1, 'x:y'), NULL),
 (2, NULL, NULL, 'NaN', 'Infinity', -0.0, 1e308, 'Infinity', false, '', NULL, '', NULL,
  '-infinity', '294276-12-31 23:59:59', '-infinity', '1970-01-01', '-1 day', 'null', '[]',
  '{}', '{}', 'sad', ROW(NULL, NULL), NULL);
