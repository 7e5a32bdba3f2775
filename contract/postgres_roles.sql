-- The roles of the portal's database. psql runs this as the superuser, connected to the
-- database, on a new or an existing one, as often as it likes: every statement converges.
--
--   portal_migrator  owns the schema and everything in it: the migration Job, the backup
--   portal_app       the service: SELECT, INSERT, UPDATE, DELETE on the tables, no DDL
--   portal_readonly  the exporter and `python -m app analyze`: SELECT and pg_monitor
--
-- Passwords come from files in the directory the psql variable `secrets` names
-- (migrator-password, app-password, readonly-password), never from the command line.
\set ON_ERROR_STOP on
\set migrator_password `cat :'secrets'/migrator-password`
\set app_password `cat :'secrets'/app-password`
\set readonly_password `cat :'secrets'/readonly-password`

SELECT format('CREATE ROLE %I', r)
  FROM unnest(ARRAY['portal_migrator', 'portal_app', 'portal_readonly']) AS r
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec

ALTER ROLE portal_migrator WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS PASSWORD :'migrator_password';
ALTER ROLE portal_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS PASSWORD :'app_password';
ALTER ROLE portal_readonly WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS PASSWORD :'readonly_password';
-- pg_stat_activity, pg_stat_statements and the settings the exporter and the analysis read.
GRANT pg_monitor TO portal_readonly;

-- Statement statistics for the analysis (a superuser's job: the extension is not trusted).
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_stat_statements not available: %', SQLERRM;
END
$$;

-- Only these roles (and the superuser) may connect; nobody gets temporary tables.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO portal_migrator, portal_app, portal_readonly',
              current_database()) \gexec

-- The migrator owns the schema: only it creates, alters and drops.
ALTER SCHEMA public OWNER TO portal_migrator;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO portal_app, portal_readonly;

-- A database migrated before these roles existed: its objects go to the migrator (indexes and
-- identity sequences follow their tables; an extension's objects stay with the extension).
SELECT format('ALTER %s %I.%I OWNER TO portal_migrator',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                             ELSE 'TABLE' END,
              n.nspname, c.relname)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public'
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND c.relowner <> 'portal_migrator'::regrole
   AND NOT EXISTS (SELECT FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype IN ('e', 'a', 'i'))
 ORDER BY c.relkind = 'S', c.relname \gexec
SELECT format('ALTER ROUTINE %s OWNER TO portal_migrator', p.oid::regprocedure)
  FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace
   AND p.proowner <> 'portal_migrator'::regrole
   AND NOT EXISTS (SELECT FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                      AND d.deptype = 'e') \gexec
SELECT format('ALTER TYPE %s OWNER TO portal_migrator', t.oid::regtype)
  FROM pg_type t
 WHERE t.typnamespace = 'public'::regnamespace
   AND t.typtype IN ('e', 'd', 'r', 'm')
   AND t.typowner <> 'portal_migrator'::regrole
   AND NOT EXISTS (SELECT FROM pg_depend d
                    WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                      AND d.deptype IN ('e', 'i')) \gexec

-- What exists now, and what the migrator creates from now on.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO portal_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO portal_app;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO portal_readonly;
ALTER DEFAULT PRIVILEGES FOR ROLE portal_migrator IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO portal_app;
ALTER DEFAULT PRIVILEGES FOR ROLE portal_migrator IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO portal_app;
ALTER DEFAULT PRIVILEGES FOR ROLE portal_migrator IN SCHEMA public
    GRANT SELECT ON TABLES TO portal_readonly;
