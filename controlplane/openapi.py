#!/usr/bin/env python3
"""Writes controlplane/openapi.json, the OpenAPI 3.1 document the control plane serves at
/fnrt/v1/openapi.json (tests/api_fuzz.rs fuzzes the API against it). Edit this, run it,
commit both."""
import json
import os

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")
S = lambda **k: k
string = {"type": "string"}
nstring = {"type": ["string", "null"]}
integer = {"type": "integer", "minimum": 0}
boolean = {"type": "boolean"}
time = {"type": "string", "format": "date-time"}
ntime = {"type": ["string", "null"], "format": "date-time"}
strmap = {"type": "object", "additionalProperties": {"type": "string"}}
envkey = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,255}$"}
envmap = {"type": "object", "propertyNames": envkey, "additionalProperties": {"type": "string"}}
rname = {"type": "string", "pattern": "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", "description": "1 to 63 of a-z, 0-9 and '-', starting with a letter, not ending with '-'."}
def zero_enum(zero, *values): return {"type": "string", "enum": ["", zero, *values], "description": f"'' and {zero} (the Go SDK's zero value) mean: unchanged or the default."}
tags = {"type": "array", "items": string}
sclass = {"type": "string", "enum": ["runc", "gvisor"]}
def sclass_input(unset): return {"type": ["string", "null"], "enum": ["", "runc", "gvisor", None],
   "description": f"Extension: the sandbox class, runc or gvisor, refused (400) when no live node offers it; null or '': {unset}."}
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def obj(props, required=None, nullable=False, desc=None):
    o = {"type": ["object", "null"] if nullable else "object", "properties": props}
    o["required"] = list(props) if required is None else required
    if desc: o["description"] = desc
    return o
def nullable(x):
    x = dict(x)
    if "$ref" in x: return {"anyOf": [x, {"type": "null"}]}
    t = x.get("type")
    if isinstance(t, str): x["type"] = [t, "null"]
    elif isinstance(t, list) and "null" not in t: x["type"] = t + ["null"]
    if "enum" in x and None not in x["enum"]: x["enum"] = x["enum"] + [None]
    return x
# Request fields: all optional; null is "not set", as serde reads it.
def nobj(**p): return obj({k: nullable(v) for k, v in p.items()}, required=[])

schemas = {
 "Error": obj({"type": {"type": "string", "description": "Scaleway's error type: not_found, invalid_arguments, already_exists, transient_state, precondition_failed, denied_authentication, out_of_stock, internal, ..."},
               "message": string}, desc="Scaleway's JSON error shape; each type adds its own fields (resource, resource_id, details, ...)."),
 "SecretHashed": obj({"key": string, "hashed_value": string}),
 "SecretInput": obj({"key": envkey, "value": nstring}, required=["key"]),
 "Namespace": obj({
   "id": string, "name": string, "environment_variables": strmap, "organization_id": string,
   "project_id": string, "status": {"type": "string", "enum": ["unknown", "ready", "deleting", "error", "locked", "creating", "pending"]},
   "registry_namespace_id": string, "error_message": nstring, "registry_endpoint": string,
   "description": string, "secret_environment_variables": {"type": "array", "items": ref("SecretHashed")},
   "region": string, "tags": tags, "created_at": time, "updated_at": time, "vpc_integration_activated": boolean,
   "registry_credentials": {"oneOf": [{"type": "null"}, obj({"registry": string, "username": string, "hashed_password": string})],
                            "description": "Extension: the registry its functions' images are pulled from with its credentials (the password never answered)."},
   "sandbox_class": dict(sclass, description="Extension: the sandbox class of its functions that name none.")}),
 "Function": obj({
   "id": string, "name": string, "namespace_id": string,
   "status": {"type": "string", "enum": ["unknown", "ready", "deleting", "error", "locked", "creating", "pending", "created"]},
   "environment_variables": strmap, "min_scale": integer, "max_scale": integer, "runtime": string,
   "memory_limit": integer, "cpu_limit": integer, "timeout": {"type": "string", "pattern": "^[0-9]+s$"},
   "handler": string, "error_message": nstring, "build_message": nstring,
   "privacy": {"type": "string", "enum": ["public", "private"]}, "description": string, "domain_name": string,
   "secret_environment_variables": {"type": "array", "items": ref("SecretHashed")}, "region": string,
   "http_option": {"type": "string", "enum": ["enabled", "redirected"]}, "runtime_message": string,
   "sandbox": {"type": "string", "enum": ["v1", "v2"]}, "tags": tags, "created_at": time, "updated_at": time,
   "ready_at": ntime, "private_network_id": nstring,
   "registry_image": {"type": "string", "description": "Extension: the OCI image an image function runs (empty for code functions)."},
   "image_acceleration": {"type": "boolean", "description": "Extension: prefetch the image onto the nodes at deploy."},
   "scf_type": {"type": "string", "enum": ["http", "event"], "description": "Extension: SCF's function type; an event function gets every call as POST /event-invoke and no HTTP calls."},
   "command": {"type": "array", "items": string, "description": "Extension: the start command, replacing the image's Entrypoint and Cmd (SCF's Command); empty: the image's."},
   "args": {"type": "array", "items": string, "description": "Extension: its arguments, replacing the image's Cmd (SCF's Args); empty: the image's."},
   "sandbox_class": dict(sclass, description="Extension: the sandbox class it runs in (its own, else its namespace's); not Scaleway's sandbox.")}),
 "Token": obj({"id": string, "token": nstring, "function_id": nstring, "namespace_id": nstring, "public_key": nstring,
   "status": {"type": "string", "enum": ["unknown", "ready", "deleting", "error", "creating"]},
   "description": string, "expires_at": ntime, "created_at": time}),
 "Cron": obj({"id": string, "function_id": string, "schedule": string, "args": {"type": "object"},
   "status": {"type": "string", "enum": ["unknown", "ready", "deleting", "error", "locked", "creating", "pending"]}, "name": string,
   "error_message": {"type": ["string", "null"], "description": "Extension: why its last run failed (status error), until a run succeeds."}}),
 "Domain": obj({"id": string, "hostname": string, "function_id": string, "url": string,
   "status": {"type": "string", "enum": ["unknown", "ready", "deleting", "error", "creating", "pending"]}, "error_message": nstring}),
 "NatsConfig": obj({"subject": string, "mnq_nats_account_id": string, "mnq_project_id": string, "mnq_region": string, "mnq_credential_id": nstring}),
 "Trigger": obj({"id": string, "name": string, "description": string, "function_id": string,
   "input_type": {"type": "string", "enum": ["unknown_input_type", "sqs", "scw_sqs", "nats", "scw_nats"]},
   "status": {"type": "string", "enum": ["unknown_status", "ready", "deleting", "error", "creating", "pending"]},
   "error_message": nstring, "scw_nats_config": ref("NatsConfig"), "scw_sqs_config": {"type": "null"}, "sqs_config": {"type": "null"}}),
 "Runtime": obj({"name": string, "language": string, "version": string, "default_handler": string, "code_sample": string,
   "status": string, "status_message": string, "extension": string, "implementation": string, "logo_url": string}),
 "Url": obj({"url": string, "headers": {"type": "object", "additionalProperties": {"type": "array", "items": string}}}),
 "Uploaded": obj({"function_id": string, "size": integer}),
 "LogLine": obj({"time": string, "node": string, "instance": string, "stream": string,
                 "request_ids": {"type": "array", "items": string}, "line": string}),
 "Replica": obj({"leading": boolean, "term": nullable(integer), "store": {"type": "string", "enum": ["redb", "etcd"]}, "revision": integer,
                   "reconcile_passes": integer, "last_reconcile_us": integer}),
 "LogsResponse": obj({"logs": {"type": "array", "items": ref("LogLine")}, "total_count": integer}),
 "Invocation": obj({"request_id": string, "status": integer, "body": string, "duration_ms": {"type": "number", "minimum": 0}, "cold_start": boolean,
   "cold_start_phases": {"type": "array", "items": obj({"name": string, "ms": {"type": "number", "minimum": 0}}),
                         "description": "A cold call's anatomy: queue, image, network, scratch, container, process, listen, answer."}}),
 "Queued": obj({"request_id": string, "status": {"type": "string", "enum": ["queued"]}}),
 "Deploying": obj({"deploying": {"type": "array", "items": string}}),
 "Agent": obj({"node": string, "dataplane": string, "state": {"type": "string", "enum": ["ready", "lost"]},
   "last_seen_ms_ago": integer, "architecture": string, "cpus": integer, "memory_mb": integer,
   "memory_reserved_mb": integer, "cpu_reserved_millis": integer, "images": integer,
   "sandbox_classes": {"type": "array", "items": string, "description": "The sandbox classes the node offers."},
   "functions": {"type": "array", "items": obj({"name": string, "ready": integer, "starting": integer, "in_flight": integer, "queued": integer})}}),
 "Placed": obj({"id": string, "namespace": string, "name": string, "status": string, "min_scale": integer, "max_scale": integer,
   "agents": {"type": "array", "items": obj({"node": string, "ready": integer, "in_flight": integer})}, "sandbox_class": sclass}),
 # Requests: what the handlers read; unknown fields are ignored, as Scaleway's API does.
 "CreateNamespaceRequest": nobj(name=rname, environment_variables=envmap, project_id=string, description=string,
   secret_environment_variables={"type": "array", "items": ref("SecretInput")}, tags=tags, registry_credentials=ref("RegistryCredentialsInput"),
   sandbox_class=sclass_input("runc")),
 "UpdateNamespaceRequest": nobj(environment_variables=envmap, description=string,
   secret_environment_variables={"type": "array", "items": ref("SecretInput")}, tags=tags, registry_credentials=ref("RegistryCredentialsInput"),
   sandbox_class=sclass_input("unchanged")),
 "RegistryCredentialsInput": {"oneOf": [
     {"type": "null"}, {"type": "object", "maxProperties": 0},
     {"type": "object", "additionalProperties": False, "required": ["registry", "username", "password"], "properties": {
        "registry": {"type": "string", "pattern": "^[A-Za-z0-9.:\\[\\]-]{1,255}$"},
        "username": {"type": "string", "pattern": "^[ -9;-~]{1,4096}$"},
        "password": {"type": "string", "pattern": "^[ -~]{1,4096}$"}}}],
   "description": "Extension: credentials for one registry (host[:port]) the namespace's functions pull their images from; null or {} removes them, absent keeps them."},
}
word = {"type": "string", "maxLength": 4096, "pattern": "^[^\\u0000]*$"}
fn_fields = dict(environment_variables=envmap, min_scale={"type": "integer", "minimum": 0, "maximum": 100},
   max_scale={"type": "integer", "minimum": 0, "maximum": 100, "description": "0: unchanged or the default (20)."},
   runtime=zero_enum("unknown_runtime", "python311", "node18", "go119", "custom"),
   memory_limit={"type": "integer", "enum": [0, 128, 256, 512, 1024, 2048, 3072, 4096], "description": "MB; 0: unchanged or the default (256)."},
   timeout={"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?s$", "description": "1s to 900s."}, handler=string,
   privacy=zero_enum("unknown_privacy", "public", "private"), description=string,
   secret_environment_variables={"type": "array", "items": ref("SecretInput")},
   http_option=zero_enum("unknown_http_option", "enabled", "redirected"), tags=tags,
   registry_image={"type": "string", "minLength": 1, "maxLength": 512, "description": "Extension: the image an image function runs."},
   image_acceleration=boolean, sandbox=zero_enum("unknown_sandbox", "v1", "v2"),
   private_network_id={"type": ["string", "null"], "maxLength": 0, "description": "Private networks are not offered."},
   scf_type=zero_enum("unknown_scf_type", "http", "event"),
   sandbox_class=sclass_input("its namespace's on create, unchanged on update"),
   command={"type": "array", "maxItems": 64, "prefixItems": [{"type": "string", "minLength": 1}], "items": word,
            "description": "Extension: the start command (SCF's Command), replacing the image's Entrypoint and Cmd; [] resets to the image's."},
   args={"type": "array", "maxItems": 64, "items": word,
         "description": "Extension: the command's arguments (SCF's Args), replacing the image's Cmd; [] resets to the image's."})
schemas["CreateFunctionRequest"] = nobj(name=rname, namespace_id=string, **fn_fields)
schemas["UpdateFunctionRequest"] = nobj(redeploy=boolean, **fn_fields)
schemas["CronRequest"] = nobj(function_id=string, schedule=string, args={"type": ["object", "null"]}, name=string)
schemas["CreateTokenRequest"] = nobj(function_id=string, namespace_id=string, description=string, expires_at=string)
schemas["CreateDomainRequest"] = nobj(hostname=string, function_id=string)
nats_in = nobj(subject=string, mnq_nats_account_id=string, mnq_project_id=string, mnq_region=string)
schemas["TriggerRequest"] = nobj(name=string, description=string, function_id=string, scw_nats_config=nats_in)
for name, item, plural in [("Namespace", "Namespace", "namespaces"), ("Function", "Function", "functions"),
                           ("Token", "Token", "tokens"), ("Cron", "Cron", "crons"), ("Domain", "Domain", "domains"),
                           ("Trigger", "Trigger", "triggers"), ("Runtime", "Runtime", "runtimes"),
                           ("Agent", "Agent", "agents"), ("Placed", "Placed", "functions")]:
    schemas[f"List{name}sResponse"] = obj({plural: {"type": "array", "items": ref(item)}, "total_count": integer})

errors = {"4XX": {"$ref": "#/components/responses/Error"}}
def ok(schema, ctype="application/json"):
    return {"200": {"description": "Done.", "content": {ctype: {"schema": schema}}}, **errors}
def op(opid, summary, schema, params=(), body=None, **extra):
    o = {"operationId": opid, "summary": summary, "parameters": [{"$ref": f"#/components/parameters/{p}"} for p in params],
         "responses": ok(schema)}
    if body: o["requestBody"] = {"required": False, "content": {"application/json": {"schema": ref(body)}}}
    o.update(extra)
    return o
L = ["page", "page_size"]
R = "/functions/v1beta1/regions/{region}"
paths = {
 R + "/namespaces": {
   "get": op("ListNamespaces", "List namespaces", ref("ListNamespacesResponse"), ["region", *L, "order_by_named", "name", "project_id"]),
   "post": op("CreateNamespace", "Create a namespace", ref("Namespace"), ["region"], "CreateNamespaceRequest")},
 R + "/namespaces/{id}": {
   "get": op("GetNamespace", "Get a namespace", ref("Namespace"), ["region", "id"]),
   "patch": op("UpdateNamespace", "Update a namespace (its deployed functions are deployed again)", ref("Namespace"), ["region", "id"], "UpdateNamespaceRequest"),
   "delete": op("DeleteNamespace", "Delete a namespace and its functions", ref("Namespace"), ["region", "id"])},
 R + "/namespaces/{id}/functions": {
   "get": op("ListNamespaceFunctions", "List a namespace's functions", ref("ListFunctionsResponse"), ["region", "id", *L, "order_by_named", "name"])},
 R + "/functions": {
   "get": op("ListFunctions", "List functions", ref("ListFunctionsResponse"), ["region", *L, "order_by_named", "namespace_id", "name"]),
   "post": op("CreateFunction", "Create a function", ref("Function"), ["region"], "CreateFunctionRequest")},
 R + "/functions/{id}": {
   "get": op("GetFunction", "Get a function", ref("Function"), ["region", "id"]),
   "patch": op("UpdateFunction", "Update a function", ref("Function"), ["region", "id"], "UpdateFunctionRequest"),
   "delete": op("DeleteFunction", "Delete a function", ref("Function"), ["region", "id"])},
 R + "/functions/{id}/deploy": {
   "post": op("DeployFunction", "Deploy a function", ref("Function"), ["region", "id"], "DeployFunctionRequest")},
 R + "/functions/{id}/invoke": {
   "post": {**op("InvokeFunction", "Extension: call a deployed function once with the body as its event (invocation_type=event: queue it, answer 202)", ref("Invocation"), ["region", "id", "invocation_type"]),
            "requestBody": {"required": False, "content": {"application/json": {"schema": {}}}}}},
 R + "/functions/{id}/upload-url": {
   "get": op("GetFunctionUploadUrl", "A signed, single-use URL to PUT a code zip at", ref("Url"), ["region", "id", "content_length"])},
 R + "/functions/{id}/download-url": {
   "get": op("GetFunctionDownloadUrl", "A signed URL to GET the code zip from", ref("Url"), ["region", "id"])},
 R + "/runtimes": {"get": op("ListFunctionRuntimes", "List the code runtimes", ref("ListRuntimesResponse"), ["region"])},
 R + "/tokens": {
   "get": op("ListTokens", "List tokens", ref("ListTokensResponse"), ["region", *L, "order_by_time", "function_id", "namespace_id"]),
   "post": op("CreateToken", "Create a token (answered once)", ref("Token"), ["region"], "CreateTokenRequest")},
 R + "/tokens/{id}": {
   "get": op("GetToken", "Get a token", ref("Token"), ["region", "id"]),
   "delete": op("DeleteToken", "Delete a token", ref("Token"), ["region", "id"])},
 R + "/crons": {
   "get": op("ListCrons", "List crons", ref("ListCronsResponse"), ["region", *L, "order_by_time", "function_id"]),
   "post": op("CreateCron", "Create a cron", ref("Cron"), ["region"], "CronRequest")},
 R + "/crons/{id}": {
   "get": op("GetCron", "Get a cron", ref("Cron"), ["region", "id"]),
   "patch": op("UpdateCron", "Update a cron", ref("Cron"), ["region", "id"], "CronRequest"),
   "delete": op("DeleteCron", "Delete a cron", ref("Cron"), ["region", "id"])},
 R + "/domains": {
   "get": op("ListDomains", "List custom domains", ref("ListDomainsResponse"), ["region", *L, "order_by_domain", "function_id"]),
   "post": op("CreateDomain", "Route a host name to a function", ref("Domain"), ["region"], "CreateDomainRequest")},
 R + "/domains/{id}": {
   "get": op("GetDomain", "Get a custom domain", ref("Domain"), ["region", "id"]),
   "delete": op("DeleteDomain", "Delete a custom domain", ref("Domain"), ["region", "id"])},
 R + "/triggers": {
   "get": op("ListTriggers", "List triggers", ref("ListTriggersResponse"), ["region", *L, "order_by_time", "function_id", "namespace_id"]),
   "post": op("CreateTrigger", "Create a NATS trigger", ref("Trigger"), ["region"], "TriggerRequest")},
 R + "/triggers/{id}": {
   "get": op("GetTrigger", "Get a trigger", ref("Trigger"), ["region", "id"]),
   "patch": op("UpdateTrigger", "Update a trigger", ref("Trigger"), ["region", "id"], "TriggerRequest"),
   "delete": op("DeleteTrigger", "Delete a trigger", ref("Trigger"), ["region", "id"])},
 "/fnrt/v1/agents": {"get": op("ListAgents", "Extension: every agent that joined, lost ones included", ref("ListAgentsResponse"))},
 "/fnrt/v1/replica": {"get": op("GetReplica", "Extension: this control-plane replica: whether it leads, its term, the store and the revision it has applied", ref("Replica"))},
 "/fnrt/v1/placement": {"get": op("ListPlacement", "Extension: where each function runs", ref("ListPlacedsResponse"))},
 "/fnrt/v1/functions/{id}/logs": {"get": {**op("GetFunctionLogs", "Extension: a function's log lines from every agent, by time", ref("LogsResponse"),
                                              ["id", "log_request_id", "log_since", "log_follow", "log_limit"]),
     "responses": {"200": {"description": "The lines; with follow=true one JSON line each, as they come.",
                           "content": {"application/json": {"schema": ref("LogsResponse")},
                                       "application/x-ndjson": {"schema": ref("LogLine")}}}, **errors}}},
 "/fnrt/v1/code/{id}": {
   "put": {"operationId": "PutCode", "summary": "Upload a code zip at a URL from upload-url", "security": [],
           "parameters": [{"$ref": "#/components/parameters/id"}, *[{"$ref": f"#/components/parameters/{p}"} for p in ["expires", "length", "sig"]]],
           "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
           "responses": ok(ref("Uploaded"))},
   "get": {"operationId": "GetCode", "summary": "Download a code zip at a URL from download-url", "security": [],
           "parameters": [{"$ref": "#/components/parameters/id"}, *[{"$ref": f"#/components/parameters/{p}"} for p in ["expires", "sig"]]],
           "responses": ok({"type": "string", "format": "binary"}, "application/zip")}},
 "/fnrt/v1/registry-events": {
   "post": {"operationId": "RegistryEvents", "summary": "Extension: the registry's push notifications (push-then-deploy)",
            "security": [{"webhook": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {"events": {"type": "array", "items": {"type": "object", "properties": {"action": string, "target": {"type": "object", "properties": {"mediaType": string, "digest": string, "repository": string, "tag": string}}}}}}}}}},
            "responses": ok(ref("Deploying"))}},
}
schemas["DeployFunctionRequest"] = nobj()
def q(name, schema, desc=None):
    p = {"name": name, "in": "query", "required": False, "schema": schema}
    if desc: p["description"] = desc
    return p
parameters = {
 "region": {"name": "region", "in": "path", "required": True, "schema": {"type": "string", "enum": ["fr-par"]},
            "description": "The region this control plane serves (its `region` setting)."},
 "id": {"name": "id", "in": "path", "required": True, "schema": string},
 "page": q("page", {"type": "integer", "minimum": 1, "maximum": 2147483647}),
 "page_size": q("page_size", {"type": "integer", "minimum": 1, "maximum": 100}),
 "order_by_named": q("order_by", {"type": "string", "enum": ["", "created_at_asc", "created_at_desc", "name_asc", "name_desc"]}),
 "order_by_time": q("order_by", {"type": "string", "enum": ["", "created_at_asc", "created_at_desc"]}),
 "order_by_domain": q("order_by", {"type": "string", "enum": ["", "created_at_asc", "created_at_desc", "hostname_asc", "hostname_desc"]}),
 "name": q("name", string, "Only those whose name contains it."),
 "project_id": q("project_id", string),
 "namespace_id": q("namespace_id", string),
 "function_id": q("function_id", string),
 "content_length": q("content_length", {"type": "integer", "minimum": 0, "maximum": 104857600}, "The zip's size in bytes; signed into the URL, which then takes exactly that many."),
 "invocation_type": q("invocation_type", {"type": "string", "enum": ["request_response", "event"]},
                      "SCF's InvocationType: request_response (default) waits for the answer; event queues the call (at most 128 KiB) and answers 202."),
 "log_request_id": q("request_id", string, "Only the lines printed during this call."),
 "log_since": q("since", {"type": "string", "format": "date-time"}, "Only lines at or after this time (RFC 3339)."),
 "log_follow": q("follow", {"type": "boolean"}, "Then new lines as they come (application/x-ndjson)."),
 "log_limit": q("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "The newest N lines (default 1000)."),
 "expires": q("expires", {"type": "integer"}),
 "length": q("length", {"type": "integer", "minimum": 0}),
 "sig": q("sig", string),
}
inv = paths[R + "/functions/{id}/invoke"]["post"]["responses"]
inv["202"] = {"description": "Queued (invocation_type=event).", "content": {"application/json": {"schema": ref("Queued")}}}
inv["503"] = {"$ref": "#/components/responses/Error", "description": "The queue (NATS) did not take the event; try again."}
doc = {
 "openapi": "3.1.0",
 "info": {"title": "fnrt control plane: Serverless Functions API", "version": "v1beta1",
          "description": "Scaleway's Serverless Functions v1beta1 API as this control plane serves it, with its extensions (registry_image, image_acceleration, /fnrt/v1). Every error answer has Scaleway's JSON error shape."},
 "servers": [{"url": "/"}],
 "security": [{"admin": []}],
 "paths": paths,
 "components": {
   "securitySchemes": {
     "admin": {"type": "apiKey", "in": "header", "name": "X-Auth-Token", "description": "The control plane's admin secret key."},
     "webhook": {"type": "http", "scheme": "bearer", "description": "The control plane's webhook_token."}},
   "parameters": parameters,
   "responses": {"Error": {"description": "Refused, in Scaleway's JSON error shape.", "content": {"application/json": {"schema": ref("Error")}}}},
   "schemas": schemas}}
# Links: what a create answers feeds the calls on that resource (the stateful phase follows them).
def link(create_path, method, targets):
    r = paths[create_path][method]["responses"]["200"]
    r["links"] = {t: {"operationId": t, "parameters": {"id": "$response.body#/id", "region": "$request.path.region"}} for t in targets}
def link_field(create_path, method, field, targets):
    r = paths[create_path][method]["responses"]["200"]
    r.setdefault("links", {})
    for t, target_field in targets:
        r["links"][f"{t}With{field}"] = {"operationId": t, "parameters": {"region": "$request.path.region"},
                                          "requestBody": {target_field: f"$response.body#/id"}}
link(R + "/namespaces", "post", ["GetNamespace", "UpdateNamespace", "DeleteNamespace", "ListNamespaceFunctions"])
link(R + "/functions", "post", ["GetFunction", "UpdateFunction", "DeleteFunction", "DeployFunction", "GetFunctionUploadUrl", "GetFunctionDownloadUrl", "InvokeFunction"])
link(R + "/tokens", "post", ["GetToken", "DeleteToken"])
paths[R + "/functions"]["post"]["responses"]["200"]["links"]["GetFunctionLogs"] = {
    "operationId": "GetFunctionLogs", "parameters": {"id": "$response.body#/id"}}
link(R + "/crons", "post", ["GetCron", "UpdateCron", "DeleteCron"])
link(R + "/domains", "post", ["GetDomain", "DeleteDomain"])
link(R + "/triggers", "post", ["GetTrigger", "UpdateTrigger", "DeleteTrigger"])
link_field(R + "/namespaces", "post", "Namespace", [("CreateFunction", "namespace_id"), ("CreateToken", "namespace_id")])
link_field(R + "/functions", "post", "Function", [("CreateCron", "function_id"), ("CreateDomain", "function_id"), ("CreateTrigger", "function_id"), ("CreateToken", "function_id")])
json.dump(doc, open(OUT, "w"), indent=1)
