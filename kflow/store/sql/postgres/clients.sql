-- name: insert_client
INSERT INTO clients (client_id, secret_hash, scopes, description, created_at)
VALUES (%(client_id)s, %(secret_hash)s, %(scopes)s, %(description)s, %(now)s);

-- name: get_client
SELECT client_id, secret_hash, scopes, description, created_at, disabled_at
FROM clients WHERE client_id = %(client_id)s;

-- name: list_clients
SELECT client_id, scopes, description, created_at, disabled_at
FROM clients ORDER BY client_id;

-- name: disable_client
UPDATE clients SET disabled_at = %(now)s WHERE client_id = %(client_id)s AND disabled_at IS NULL;

-- name: delete_client
DELETE FROM clients WHERE client_id = %(client_id)s;
