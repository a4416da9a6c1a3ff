-- name: insert_definition
INSERT INTO definitions (name, version, content_hash, body, activity_count, created_at)
VALUES (%(name)s, %(version)s, %(content_hash)s, %(body)s, %(activity_count)s, %(now)s);

-- name: latest_definition
SELECT name, version, content_hash, body, activity_count, created_at
FROM definitions WHERE name = %(name)s ORDER BY version DESC LIMIT 1;

-- name: get_definition
SELECT name, version, content_hash, body, activity_count, created_at
FROM definitions WHERE name = %(name)s AND version = %(version)s;

-- name: list_latest_definitions
SELECT d.name, d.version, d.activity_count, d.created_at, counts.versions
FROM definitions AS d
JOIN (SELECT name, MAX(version) AS version, COUNT(*) AS versions
      FROM definitions GROUP BY name) AS counts
  ON counts.name = d.name AND counts.version = d.version
ORDER BY d.name
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_definition_names
SELECT COUNT(DISTINCT name) AS total FROM definitions;

-- name: list_definition_versions
SELECT name, version, activity_count, created_at
FROM definitions WHERE name = %(name)s ORDER BY version DESC;

-- name: expect_latest_definition
-- Fails the transaction (SQLSTATE KF001) unless version is the newest of name.
SELECT kflow_expect_latest_definition(%(name)s, %(version)s);
