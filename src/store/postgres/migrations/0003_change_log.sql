-- qualcache schema, version 3: the change log.
--
-- One concept of position: the change counter. Every writing statement
-- already bumps it (statement triggers, 0001); now the same trigger also
-- appends one row per person the statement touched to `change_log`, all
-- with the counter's new value, and sends a NOTIFY that PostgreSQL
-- delivers at commit. Writers hold the counter's row lock until they
-- commit, so counter values are handed out in commit order: a reader that
-- sees value V has seen every change with a version <= V and none above.
-- A snapshot records the counter its consistent read saw (its header's
-- source version); a daemon replays `change_log` rows above it.
--
-- A person id of NULL means "every person may have changed" (TRUNCATE, an
-- insurer renamed, a bulk load): it cannot be applied person by person, so
-- the daemon builds a new snapshot instead. After a TRUNCATE in a
-- transaction the rest of the transaction logs no per-person rows: the
-- whole-table marker covers them. A bulk loader (`qualcache db load`) sets
-- `qualcache.whole_change` to 'bulk' for its transaction first, which
-- logs one marker for the whole load.
--
-- Pruning: `change_counter.pruned_through` is the highest version whose
-- log rows may have been deleted. A reader whose position is below it
-- cannot replay and builds a snapshot instead.

ALTER TABLE change_counter ADD COLUMN pruned_through bigint NOT NULL DEFAULT 0;
-- Nothing before this migration was logged: a snapshot built before it
-- cannot be caught up by replay (its daemon builds a new one).
UPDATE change_counter SET pruned_through = value;

CREATE TABLE change_log (
    version bigint NOT NULL,
    person_id bigint,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX change_log_version ON change_log (version);

-- Bumps the counter and logs the persons in the transition tables. The
-- trigger's first argument names the column that leads to the person:
-- 'person_id' (persons, card_links, qualifications), 'qualification_id'
-- (certificates and public expenses, through qualifications) or 'none'
-- (insurers: a rename changes many persons' answers, so an update is a
-- whole-table change).
CREATE FUNCTION log_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    whole boolean := TG_OP = 'TRUNCATE' OR (TG_ARGV[0] = 'none' AND TG_OP = 'UPDATE');
BEGIN
    UPDATE change_counter SET value = value + 1 RETURNING value INTO v;
    IF coalesce(current_setting('qualcache.whole_change', true), '') = 'on' THEN
        -- A whole-table marker of this transaction covers every row.
        NULL;
    ELSIF current_setting('qualcache.whole_change', true) = 'bulk' THEN
        -- A bulk load said so before its first write: one marker.
        INSERT INTO change_log (version, person_id) VALUES (v, NULL);
        PERFORM set_config('qualcache.whole_change', 'on', true);
    ELSIF whole THEN
        INSERT INTO change_log (version, person_id) VALUES (v, NULL);
        IF TG_OP = 'TRUNCATE' THEN
            PERFORM set_config('qualcache.whole_change', 'on', true);
        END IF;
    ELSIF TG_ARGV[0] = 'none' THEN
        -- A new insurer has no qualifications yet, and one still used
        -- cannot be deleted: no answer changes.
        NULL;
    ELSIF TG_ARGV[0] = 'person_id' THEN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO change_log (version, person_id)
                SELECT DISTINCT v, person_id FROM new_rows;
        ELSIF TG_OP = 'UPDATE' THEN
            INSERT INTO change_log (version, person_id)
                SELECT v, person_id FROM new_rows UNION SELECT v, person_id FROM old_rows;
        ELSE
            INSERT INTO change_log (version, person_id)
                SELECT DISTINCT v, person_id FROM old_rows;
        END IF;
    ELSE
        -- An attachment: its qualification's person. A row deleted with
        -- its qualification (ON DELETE CASCADE) finds none here, but the
        -- qualification's own delete logged the person.
        IF TG_OP = 'INSERT' THEN
            INSERT INTO change_log (version, person_id)
                SELECT DISTINCT v, q.person_id
                  FROM new_rows n JOIN qualifications q USING (qualification_id);
        ELSIF TG_OP = 'UPDATE' THEN
            INSERT INTO change_log (version, person_id)
                SELECT v, q.person_id
                  FROM (SELECT qualification_id FROM new_rows
                        UNION SELECT qualification_id FROM old_rows) c
                  JOIN qualifications q USING (qualification_id)
                 GROUP BY q.person_id;
        ELSE
            INSERT INTO change_log (version, person_id)
                SELECT DISTINCT v, q.person_id
                  FROM old_rows o JOIN qualifications q USING (qualification_id);
        END IF;
    END IF;
    PERFORM pg_notify('qualcache_changes', current_schema() || ' ' || v);
    RETURN NULL;
END
$$;
ALTER FUNCTION log_change() SET search_path FROM CURRENT;

-- Transition tables need one trigger per event.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('insurers', 'none'),
        ('persons', 'person_id'),
        ('card_links', 'person_id'),
        ('qualifications', 'person_id'),
        ('elderly_certificates', 'qualification_id'),
        ('limit_certificates', 'qualification_id'),
        ('disease_certificates', 'qualification_id'),
        ('public_expenses', 'qualification_id')) AS x(tab, via)
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %I', t.tab || '_changed', t.tab);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION log_change(%L)', t.tab || '_inserted', t.tab, t.via);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %I REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION log_change(%L)', t.tab || '_updated', t.tab, t.via);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS old_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION log_change(%L)', t.tab || '_deleted', t.tab, t.via);
        EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %I
                        FOR EACH STATEMENT EXECUTE FUNCTION log_change(%L)', t.tab || '_truncated', t.tab, t.via);
    END LOOP;
END
$$;
DROP FUNCTION bump_change_counter();
