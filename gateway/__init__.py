"""The HTTP gateway: webhooks for the CRM (start calls) and the agent's tooling (report actions).

Bodies are the contract's camelCase JSON. Actions go to the workflow as updates, so a caller
learns at once whether the call accepted them (200), refused them (409, with the workflow's
reason) or does not exist (404). An action's `Idempotency-Key` header becomes the update's id:
the same request sent again changes nothing and is answered as the first one was. Every route
but `/healthz` and the OpenAPI pages needs a bearer token from `GATEWAY_TOKENS` (or
`GATEWAY_TOKENS_FILE`) with the route's scope: `start`, `act` or `read`. The gate
(`gateway.gate`) holds every door before a body is parsed: body sizes, JSON only, tokens and
scopes, rate and concurrency limits per token, and this machine's own requests only when running
without tokens. The routes only translate HTTP to `starter.service` and back.

`gateway.app.create_app` builds the application; `python -m starter serve` runs it.
"""
