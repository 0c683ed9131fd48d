-- Makes FerretDB 1.24's pushed-down filters use the indexes the code declares.
--
-- FerretDB's postgresql handler stores each document as one jsonb column and
-- turns an equality filter {f: v} into (_jsonb -> 'f') @> 'v'. The indexes it
-- creates for createIndexes are btree indexes on (_jsonb -> 'f'), which serve
-- only =, <, >: PostgreSQL cannot use them for @>, so every filter was a
-- sequential scan. This event trigger gives each such index a GIN twin on the
-- same expressions (jsonb_path_ops serves @>), created in the same transaction,
-- so {submitted_by: "alice"} becomes a bitmap index scan. Applied to the
-- ferretdb database by scripts/services.sh; idempotent.
CREATE OR REPLACE FUNCTION finapp_gin_twin() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
DECLARE
  cmd record;
  idx record;
  exprs text;
BEGIN
  FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE INDEX' LOOP
    SELECT i.indrelid, i.indnkeyatts, am.amname, c.relname INTO idx
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indexrelid
      JOIN pg_am am ON am.oid = c.relam
     WHERE i.indexrelid = cmd.objid;
    CONTINUE WHEN NOT FOUND OR idx.amname <> 'btree'
      OR pg_get_indexdef(cmd.objid) NOT LIKE '%(_jsonb -> %';
    SELECT string_agg(pg_get_indexdef(cmd.objid, k, true) || ' jsonb_path_ops', ', ' ORDER BY k)
      INTO exprs FROM generate_series(1, idx.indnkeyatts) AS k;
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING gin (%s)',
                   left(idx.relname, 59) || '_gin', idx.indrelid::regclass, exprs);
  END LOOP;
END
$fn$;

DO $do$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'finapp_gin_twin') THEN
    CREATE EVENT TRIGGER finapp_gin_twin ON ddl_command_end WHEN TAG IN ('CREATE INDEX')
      EXECUTE FUNCTION finapp_gin_twin();
  END IF;
END
$do$;
