-- qualcache schema, version 2: an insurance key may repeat.
--
-- A person who left and rejoined an insurer under the same numbers, or a
-- number given again after its holder lost it, gives several
-- qualifications the same (insurer, symbol, number, branch). That is
-- normal data as long as their periods [acquired_date, lost_date) do not
-- overlap; the as-of day of a lookup picks the qualification that held.
-- The loader (`qualcache db load`) and every snapshot build refuse
-- overlapping periods for one key, naming both rows, as they refuse bad
-- check digits; the database keeps a plain index on the key.
DROP INDEX qualifications_key;
CREATE INDEX qualifications_key
    ON qualifications (insurer_number, coalesce(symbol, ''), number, coalesce(branch, ''));
