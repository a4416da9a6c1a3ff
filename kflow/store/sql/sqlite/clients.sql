-- name: insert_client
INSERT INTO clients (client_id, secret_hash, scopes, description, created_at)
VALUES (:client_id, :secret_hash, :scopes, :description, :now);

-- name: get_client
SELECT client_id, secret_hash, scopes, description, created_at, disabled_at
FROM clients WHERE client_id = :client_id;

-- name: list_clients
SELECT client_id, scopes, description, created_at, disabled_at
FROM clients ORDER BY client_id;

-- name: disable_client
UPDATE clients SET disabled_at = :now WHERE client_id = :client_id AND disabled_at IS NULL;

-- name: delete_client
DELETE FROM clients WHERE client_id = :client_id;
