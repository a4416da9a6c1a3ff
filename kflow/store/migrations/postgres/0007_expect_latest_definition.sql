-- A start that knows a definition's newest version from the server's cache sends
-- this check with its writes instead of reading the version first (one wait for
-- PostgreSQL fewer): if another version became the newest meanwhile, the check
-- fails the transaction with SQLSTATE KF001 and the start runs again with a
-- fresh read (kflow.server.definitions.DefinitionCache.latest_known).
CREATE FUNCTION kflow_expect_latest_definition(p_name TEXT, p_version TEXT)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT version FROM definitions WHERE name = p_name
        ORDER BY version DESC LIMIT 1) IS DISTINCT FROM p_version THEN
        RAISE EXCEPTION 'the newest version of workflow definition % is no longer %',
            p_name, p_version USING ERRCODE = 'KF001';
    END IF;
END
$$;
