-- Who wrote a subscription (a token's client, user, patient and scopes): it is
-- told only what that client may see. NULL: written with authentication off, or
-- by the server itself.
ALTER TABLE subscription ADD COLUMN owner jsonb;

-- A Subscription's signing secret is kept with its channel (subscription.channel)
-- only: stored versions lose the extension that carried it, so that no read,
-- search, history or export returns it. The channel already holds every secret.
WITH stripped AS (
    SELECT v.res_type, v.res_id, v.version_id,
           (SELECT jsonb_agg(e ORDER BY n)
              FROM jsonb_array_elements(v.resource -> 'extension') WITH ORDINALITY AS x(e, n)
             WHERE e ->> 'url' IS DISTINCT FROM 'https://passerelle.example.fr/fhir/StructureDefinition/subscription-secret'
           ) AS others
      FROM resource_version v
     WHERE v.res_type = 'Subscription'
       AND v.resource -> 'extension' @> '[{"url": "https://passerelle.example.fr/fhir/StructureDefinition/subscription-secret"}]'
)
UPDATE resource_version v
   SET resource = CASE WHEN s.others IS NULL THEN v.resource - 'extension'
                       ELSE jsonb_set(v.resource, '{extension}', s.others) END
  FROM stripped s
 WHERE v.res_type = s.res_type AND v.res_id = s.res_id AND v.version_id = s.version_id;
