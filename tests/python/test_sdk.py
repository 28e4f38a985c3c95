"""The control plane's API driven by Scaleway's official Python SDK (scaleway on PyPI).

Run by tests/controlplane.rs against a control plane and one joined agent; the
addresses, keys and image references come from the environment it sets.
"""

import datetime
import io
import os
import time
import uuid
import zipfile

import pytest
import requests
from scaleway import Client
from scaleway.function.v1beta1 import FunctionV1Beta1API
from scaleway.function.v1beta1.marshalling import marshal_CreateFunctionRequest, marshal_UpdateFunctionRequest
from scaleway.function.v1beta1.types import (
    CreateFunctionRequest,
    FunctionHttpOption,
    FunctionPrivacy,
    FunctionRuntime,
    FunctionSandbox,
    FunctionStatus,
    ListNamespacesRequestOrderBy,
    Secret,
    UpdateFunctionRequest,
)
from scaleway_core.api import ScalewayException
from scaleway_core.utils import WaitForOptions

API = os.environ["FNRT_API_URL"]
GATEWAY = os.environ["FNRT_GATEWAY_URL"]
ADMIN = os.environ["FNRT_ADMIN_TOKEN"]
ECHO = os.environ["FNRT_IMAGE_ECHO"]
NEVER = os.environ["FNRT_IMAGE_NEVER_LISTENS"]
ARM = os.environ["FNRT_IMAGE_ARM64"]
REGION = "fr-par"
BASE = f"/functions/v1beta1/regions/{REGION}"


@pytest.fixture(scope="module")
def api():
    client = Client(
        access_key="SCW" + "X" * 17,
        secret_key=ADMIN,
        default_project_id=str(uuid.uuid4()),
        default_region=REGION,
        api_url=API,
    )
    return FunctionV1Beta1API(client)


def raw(api, method, path, body=None):
    """A call the SDK has no parameter for (registry_image), through its own transport."""
    res = api._request(method, BASE + path, body=body)
    api._throw_on_error(res)
    return res.json()


def error_of(call):
    with pytest.raises(ScalewayException) as e:
        call()
    return e.value.status_code, e.value.response.json()


def wait(api, function_id):
    return api.wait_for_function(function_id=function_id, options=WaitForOptions(timeout=120, min_delay=1, max_delay=2))


def test_namespaces_secrets_are_only_hashed(api):
    ns = api.create_namespace(
        name="sdk-ns",
        environment_variables={"A": "1"},
        secret_environment_variables=[Secret(key="PASSWORD", value="hunter2-sdk")],
        description="made by the SDK",
    )
    assert ns.status == "ready" and ns.name == "sdk-ns" and ns.environment_variables == {"A": "1"}
    assert [s.key for s in ns.secret_environment_variables] == ["PASSWORD"]
    # Scaleway's form: an argon2id PHC string, which clients verify values against.
    assert ns.secret_environment_variables[0].hashed_value.startswith("$argon2id$v=19$")
    text = requests.get(f"{API}{BASE}/namespaces/{ns.id}", headers={"X-Auth-Token": ADMIN}).text
    assert "hunter2-sdk" not in text
    got = api.get_namespace(namespace_id=ns.id)
    assert got.created_at is not None and got.created_at.tzinfo is not None
    up = api.update_namespace(namespace_id=ns.id, environment_variables={"B": "2"}, description="changed")
    assert up.environment_variables == {"B": "2"} and up.description == "changed"
    status, body = error_of(lambda: api.create_namespace(name="sdk-ns"))
    assert status == 409 and "exists" in body["message"]
    assert body["type"] == "already_exists" and body["resource"] == "namespace" and body["resource_id"] == ns.id, body
    deleted = api.delete_namespace(namespace_id=ns.id)
    assert deleted.status == "deleting"
    status, body = error_of(lambda: api.get_namespace(namespace_id=ns.id))
    assert status == 404 and body["type"] == "not_found" and body["resource"] == "namespace"


def test_pagination_and_order(api):
    ids = [api.create_namespace(name=f"page-{i:02}").id for i in range(25)]
    pages = [api.list_namespaces(name="page-", page=p, page_size=10) for p in (1, 2, 3, 4)]
    assert [len(p.namespaces) for p in pages] == [10, 10, 5, 0]
    assert all(p.total_count == 25 for p in pages)
    every = api.list_namespaces_all(name="page-", page_size=10)
    assert sorted(n.id for n in every) == sorted(ids)
    desc = api.list_namespaces(name="page-", order_by=ListNamespacesRequestOrderBy.NAME_DESC, page_size=3)
    assert [n.name for n in desc.namespaces] == ["page-24", "page-23", "page-22"]
    status, body = error_of(lambda: api.list_namespaces(page_size=101))
    assert status == 400 and body["type"] == "invalid_arguments"
    assert body["details"][0]["argument_name"] == "page_size" and "100" in body["details"][0]["help_message"]
    for i in ids:
        api.delete_namespace(namespace_id=i)
    assert api.list_namespaces(name="page-").total_count == 0


def test_bad_input_is_refused_and_nothing_is_half_made(api):
    status, body = error_of(lambda: api.create_namespace(name="Bad_Name"))
    assert status == 400 and body["details"][0]["argument_name"] == "name"
    assert api.list_namespaces(name="Bad_Name").total_count == 0
    ns = api.create_namespace(name="bad-input")
    status, body = error_of(lambda: api.create_function(namespace_id=ns.id, name="f", memory_limit=100))
    assert status == 400 and "128" in body["details"][0]["help_message"]
    status, body = error_of(lambda: api.create_function(namespace_id=ns.id, name="f", timeout="5m"))
    assert status == 400 and body["details"][0]["argument_name"] == "timeout"
    status, body = error_of(lambda: api.create_function(namespace_id=ns.id, name="f", min_scale=3, max_scale=2))
    assert status == 400 and body["details"][0]["argument_name"] == "min_scale"
    assert api.list_functions(namespace_id=ns.id).total_count == 0
    status, body = error_of(lambda: api.get_function(function_id=str(uuid.uuid4())))
    assert status == 404 and body["resource"] == "function"
    status, body = error_of(lambda: api.create_function(namespace_id=str(uuid.uuid4()), name="f"))
    assert status == 404 and body["resource"] == "namespace"
    fn = api.create_function(namespace_id=ns.id, name="f")
    status, body = error_of(lambda: api.create_cron(function_id=fn.id, schedule="every minute"))
    assert status == 400 and body["details"][0]["argument_name"] == "schedule"
    status, body = error_of(lambda: api.create_cron(function_id=fn.id, schedule="61 * * * *"))
    assert status == 400
    assert api.list_crons(function_id=fn.id).total_count == 0
    status, body = error_of(lambda: api.deploy_function(function_id=fn.id))
    assert status == 412 and "registry_image" in body["message"]
    r = requests.get(f"{API}{BASE}/namespaces")
    assert r.status_code == 401 and r.json()["type"] == "denied_authentication"
    r = requests.get(f"{API}{BASE}/namespaces", headers={"X-Auth-Token": str(uuid.uuid4())})
    assert r.status_code == 401
    api.delete_namespace(namespace_id=ns.id)


def test_deploy_call_tokens_and_crons(api):
    ns = api.create_namespace(name="sdk-deploy", environment_variables={"FROM_NS": "ns"})
    fn = api.create_function(
        namespace_id=ns.id,
        name="echo",
        min_scale=1,
        max_scale=2,
        memory_limit=256,
        timeout="30s",
        privacy=FunctionPrivacy.PRIVATE,
        environment_variables={"GREETING": "hello"},
        secret_environment_variables=[Secret(key="API_KEY", value="s3cret-sdk")],
    )
    assert fn.status == FunctionStatus.CREATED and fn.timeout == "30s" and fn.domain_name.startswith("sdk-deploy-echo.")
    raw(api, "PATCH", f"/functions/{fn.id}", {"registry_image": ECHO})
    assert api.deploy_function(function_id=fn.id).status == FunctionStatus.PENDING
    status, body = error_of(lambda: api.deploy_function(function_id=fn.id))
    assert status == 409 and body["type"] == "transient_state" and body["current_state"] == "pending", body
    ready = wait(api, fn.id)
    assert ready.status == FunctionStatus.READY, ready.error_message
    assert ready.ready_at is not None
    assert [f.id for f in api.list_functions_all(namespace_id=ns.id)] == [fn.id]

    url = f"{GATEWAY}/sdk-deploy/echo/hello?x=1"
    r = requests.post(url, data="hi")
    assert r.status_code == 403 and "private" in r.json()["error"]
    token = api.create_token(function_id=fn.id, description="for the test")
    assert token.token
    r = requests.post(url, data="hi", headers={"X-Auth-Token": token.token})
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["path"] == "/hello?x=1" and seen["body"] == "hi"
    assert seen["env"]["GREETING"] == "hello" and seen["env"]["FROM_NS"] == "ns" and seen["env"]["API_KEY"] == "s3cret-sdk"
    assert not any(k.lower() == "x-auth-token" for k, _ in seen["headers"]), "the token is not forwarded"
    assert api.get_token(token_id=token.id).token is None
    assert [t.id for t in api.list_tokens_all(function_id=fn.id)] == [token.id]
    api.delete_token(token_id=token.id)
    assert requests.post(url, data="hi", headers={"X-Auth-Token": token.token}).status_code == 403

    ns_token = api.create_token(namespace_id=ns.id)
    r = requests.post(url, headers={"X-Auth-Token": ns_token.token})
    assert r.status_code == 200, r.text
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    short = api.create_token(function_id=fn.id, expires_at=soon)
    assert requests.post(url, headers={"X-Auth-Token": short.token}).status_code == 200
    time.sleep(2.5)
    assert requests.post(url, headers={"X-Auth-Token": short.token}).status_code == 403

    cron = api.create_cron(function_id=fn.id, schedule="*/5 * * * *", args={"job": "nightly"}, name="c1")
    assert cron.status == "ready" and cron.args == {"job": "nightly"}
    cron = api.update_cron(cron_id=cron.id, schedule="0 * * * *")
    assert api.get_cron(cron_id=cron.id).schedule == "0 * * * *"
    assert [c.id for c in api.list_crons_all(function_id=fn.id)] == [cron.id]
    assert api.delete_cron(cron_id=cron.id).id == cron.id

    dom = api.create_domain(hostname="api.example.test", function_id=fn.id)
    assert dom.url == "http://api.example.test" and dom.status == "ready"
    by_host = {"Host": "api.example.test", "X-Auth-Token": ns_token.token}
    r = requests.post(f"{GATEWAY}/via-domain?d=1", headers=by_host)
    assert r.status_code == 200 and r.json()["path"] == "/via-domain?d=1", r.text
    status, body = error_of(lambda: api.create_domain(hostname="api.example.test", function_id=fn.id))
    assert status == 409 and body["resource"] == "domain"
    status, body = error_of(lambda: api.create_domain(hostname="not a host", function_id=fn.id))
    assert status == 400 and body["details"][0]["argument_name"] == "hostname"
    assert [x.id for x in api.list_domains_all(function_id=fn.id)] == [dom.id]
    assert api.delete_domain(domain_id=dom.id).status == "deleting"
    assert requests.post(f"{GATEWAY}/via-domain", headers=by_host).status_code == 404

    assert api.delete_function(function_id=fn.id).status == FunctionStatus.DELETING
    assert requests.post(url, headers={"X-Auth-Token": ns_token.token}).status_code == 404
    # Deleting until no agent runs it, then gone.
    deadline = time.time() + 30
    while True:
        try:
            assert api.get_function(function_id=fn.id).status == FunctionStatus.DELETING
        except ScalewayException as e:
            assert e.status_code == 404
            break
        assert time.time() < deadline, "the deleted function stayed"
        time.sleep(0.2)
    api.delete_namespace(namespace_id=ns.id)


def test_failed_deploys_say_why(api):
    ns = api.create_namespace(name="sdk-fail")
    never = api.create_function(namespace_id=ns.id, name="never")
    raw(api, "PATCH", f"/functions/{never.id}", {"registry_image": NEVER})
    api.deploy_function(function_id=never.id)
    got = wait(api, never.id)
    assert got.status == FunctionStatus.ERROR and "9000" in got.error_message, got.error_message
    arm = api.create_function(namespace_id=ns.id, name="arm")
    raw(api, "PATCH", f"/functions/{arm.id}", {"registry_image": ARM})
    api.deploy_function(function_id=arm.id)
    got = wait(api, arm.id)
    assert got.status == FunctionStatus.ERROR and "amd64" in got.error_message, got.error_message
    r = requests.post(f"{GATEWAY}/sdk-fail/arm/")
    assert r.status_code == 503 and "deploy failed" in r.json()["error"]
    api.delete_namespace(namespace_id=ns.id)


def zip_of(files):
    """A zip of {name: text or (text, mode)}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in files.items():
            text, mode = content if isinstance(content, tuple) else (content, 0o644)
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100000 | mode) << 16
            z.writestr(info, text)
    return buf.getvalue()


def upload(api, function_id, data):
    u = api.get_function_upload_url(function_id=function_id, content_length=len(data))
    return requests.put(u.url, data=data, headers={"Content-Type": "application/octet-stream"})


PY_V1 = 'def handle(event, context):\n    return {"statusCode": 200, "body": {"answer": "v1", "path": event["path"], "q": event["queryStringParameters"]}}\n'
PY_V2 = 'def handle(event, context):\n    return {"answer": "v2", "body": event["body"]}\n'
BOOT = "#!/bin/sh\nexec busybox httpd -f -p 9000 -h /var/user/www\n"


def test_code_functions_python311_and_custom(api):
    names = [r.name for r in api.list_function_runtimes().runtimes]
    assert "python311" in names and "custom" in names, names
    ns = api.create_namespace(name="sdk-code")
    fn = api.create_function(namespace_id=ns.id, name="py", runtime="python311", handler="handler.handle", min_scale=1, memory_limit=256)

    # Bad zips are refused and nothing is kept.
    r = upload(api, fn.id, b"not a zip")
    assert r.status_code == 400 and "not a zip" in r.text, r.text
    r = upload(api, fn.id, zip_of({"../evil.py": "x", "handler.py": "x"}))
    assert r.status_code == 400 and "leaves the zip" in r.text, r.text
    r = upload(api, fn.id, zip_of({"other.py": "x"}))
    assert r.status_code == 400 and "handler.py" in r.text, r.text
    status, body = error_of(lambda: api.deploy_function(function_id=fn.id))
    assert status == 412 and "upload" in body["message"]
    u = api.get_function_upload_url(function_id=fn.id, content_length=10)
    assert requests.put(u.url.replace("sig=", "sig=0"), data=b"x").status_code == 401

    # Upload, deploy, call; then new code, redeploy, the new answer.
    v1 = zip_of({"handler.py": PY_V1})
    assert upload(api, fn.id, v1).status_code == 200
    api.deploy_function(function_id=fn.id)
    got = wait(api, fn.id)
    assert got.status == FunctionStatus.READY, got.error_message
    assert got.build_message.startswith("built ") and "/sdk-code/py:1@sha256:" in got.build_message, got.build_message
    r = requests.get(f"{GATEWAY}/sdk-code/py/hello?x=1")
    assert r.status_code == 200 and r.json() == {"answer": "v1", "path": "/hello", "q": {"x": "1"}}, r.text
    d = api.get_function_download_url(function_id=fn.id)
    assert requests.get(d.url).content == v1
    assert upload(api, fn.id, zip_of({"handler.py": PY_V2})).status_code == 200
    api.deploy_function(function_id=fn.id)
    assert wait(api, fn.id).status == FunctionStatus.READY
    r = requests.post(f"{GATEWAY}/sdk-code/py/", data="payload")
    assert r.json() == {"answer": "v2", "body": "payload"}, r.text

    # The custom runtime: scf_bootstrap starts the user's own server.
    cf = api.create_function(namespace_id=ns.id, name="custom", runtime="custom", min_scale=1, memory_limit=128)
    r = upload(api, cf.id, zip_of({"www/index.html": "x"}))
    assert r.status_code == 400 and "scf_bootstrap" in r.text
    assert upload(api, cf.id, zip_of({"scf_bootstrap": (BOOT, 0o755), "www/index.html": "custom v1"})).status_code == 200
    api.deploy_function(function_id=cf.id)
    got = wait(api, cf.id)
    assert got.status == FunctionStatus.READY, got.error_message
    assert requests.get(f"{GATEWAY}/sdk-code/custom/").text == "custom v1"
    assert upload(api, cf.id, zip_of({"scf_bootstrap": (BOOT, 0o755), "www/index.html": "custom v2"})).status_code == 200
    api.deploy_function(function_id=cf.id)
    assert wait(api, cf.id).status == FunctionStatus.READY
    assert requests.get(f"{GATEWAY}/sdk-code/custom/").text == "custom v2"
    api.delete_namespace(namespace_id=ns.id)


NODE = """module.exports.handle = async (event, context) => ({
  statusCode: 200,
  body: { answer: 'node', path: event.path, q: event.queryStringParameters, rid: context.requestId.length > 0 },
});
module.exports.cb = (event, context, callback) => { setTimeout(() => callback(null, { answer: 'callback', body: event.body }), 5); };
"""
GO = """package hello

import (
	"fmt"
	"io"
	"net/http"
)

// Handle answers with the path and the body, as Scaleway's Go runtime calls it.
func Handle(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"answer":"go","path":%q,"body":%q}`, r.URL.Path, string(b))
}
"""


def test_code_functions_node18_go119_and_handler_paths(api):
    runtimes = {r.name: r for r in api.list_function_runtimes().runtimes}
    assert {"python311", "node18", "go119", "custom"} <= set(runtimes), sorted(runtimes)
    assert runtimes["node18"].language == "Node" and runtimes["go119"].default_handler == "Handle"
    ns = api.create_namespace(name="sdk-langs")
    long_wait = WaitForOptions(timeout=300, min_delay=1, max_delay=2)

    def deploy(name, runtime, handler, files, memory=256):
        fn = api.create_function(namespace_id=ns.id, name=name, runtime=runtime, handler=handler, min_scale=1, memory_limit=memory)
        r = upload(api, fn.id, zip_of(files))
        assert r.status_code == 200, r.text
        api.deploy_function(function_id=fn.id)
        return api.wait_for_function(function_id=fn.id, options=long_wait)

    # The src/handler.handle form: a file under a directory.
    got = deploy("pysrc", "python311", "src/handler.handle", {"src/handler.py": PY_V1})
    assert got.status == FunctionStatus.READY, got.error_message
    assert requests.get(f"{GATEWAY}/sdk-langs/pysrc/p?x=2").json() == {"answer": "v1", "path": "/p", "q": {"x": "2"}}

    # Node: an async handler and one that calls back, in src/handler.js.
    got = deploy("node", "node18", "src/handler.handle", {"src/handler.js": NODE})
    assert got.status == FunctionStatus.READY, got.error_message
    r = requests.get(f"{GATEWAY}/sdk-langs/node/n?y=3")
    assert r.status_code == 200 and r.json() == {"answer": "node", "path": "/n", "q": {"y": "3"}, "rid": True}, r.text
    got = deploy("nodecb", "node18", "src/handler.cb", {"src/handler.js": NODE})
    assert got.status == FunctionStatus.READY, got.error_message
    assert requests.post(f"{GATEWAY}/sdk-langs/nodecb/", data="hey").json() == {"answer": "callback", "body": "hey"}
    # A handler path leaving the zip's root is refused before any build.
    bad = api.create_function(namespace_id=ns.id, name="bad", runtime="node18", handler="../x.handle")
    status, body = error_of(lambda: api.get_function_upload_url(function_id=bad.id, content_length=10))
    assert status == 400 and body["details"][0]["argument_name"] == "handler", body

    # Go: the user's module compiled at deploy; Handle serves every path.
    got = deploy("go", "go119", "Handle", {"go.mod": "module example.com/hello\n\ngo 1.19\n", "hello.go": GO}, memory=128)
    assert got.status == FunctionStatus.READY, got.error_message
    assert "built " in got.build_message, got.build_message
    r = requests.post(f"{GATEWAY}/sdk-langs/go/g", data="body")
    assert r.status_code == 200 and r.json() == {"answer": "go", "path": "/g", "body": "body"}, r.text
    # Code that does not compile: the deploy fails with the compiler's words.
    got = deploy("gobad", "go119", "Handle", {"go.mod": "module example.com/bad\n", "bad.go": "package bad\nfunc Handle( {\n"}, memory=128)
    assert got.status == FunctionStatus.ERROR and "go build failed" in got.error_message, got.error_message
    api.delete_namespace(namespace_id=ns.id)


def test_zero_values_of_enums_mean_not_set(api):
    """Request objects marshalled whole, as the Go SDK (scw, Terraform) sends every request:
    each enum's unknown_* zero value, 0 for unset numbers, empty lists."""
    ns = api.create_namespace(name="sdk-zero")
    req = CreateFunctionRequest(namespace_id=ns.id, name="zero")
    body = marshal_CreateFunctionRequest(req, api.client)
    assert body["privacy"] == "unknown_privacy" and body["sandbox"] == "unknown_sandbox", body
    assert body["runtime"] == "unknown_runtime" and body["http_option"] == "unknown_http_option", body
    fn = raw(api, "POST", "/functions", body)
    assert fn["privacy"] == "public" and fn["http_option"] == "enabled" and fn["sandbox"] == "v2", fn
    assert fn["memory_limit"] == 256 and fn["max_scale"] == 20 and fn["timeout"] == "300s", fn
    # An update that only sets the sandbox keeps everything else.
    raw(api, "PATCH", f"/functions/{fn['id']}", {"privacy": "private"})
    up = UpdateFunctionRequest(function_id=fn["id"], sandbox=FunctionSandbox.V1, redeploy=False)
    body = marshal_UpdateFunctionRequest(up, api.client)
    got = raw(api, "PATCH", f"/functions/{fn['id']}", body)
    assert got["sandbox"] == "v1" and got["privacy"] == "private" and got["http_option"] == "enabled", got
    # The Go SDK's exact bytes for an update of the sandbox alone.
    go = {"runtime": "unknown_runtime", "privacy": "unknown_privacy", "secret_environment_variables": None,
          "http_option": "unknown_http_option", "sandbox": "v2"}
    got = raw(api, "PATCH", f"/functions/{fn['id']}", go)
    assert got["sandbox"] == "v2" and got["privacy"] == "private", got
    # Typed values still are checked, and a name taken says which resource holds it.
    status, body = error_of(lambda: raw(api, "PATCH", f"/functions/{fn['id']}", {"privacy": "secret"}))
    assert status == 400 and body["details"][0]["argument_name"] == "privacy", body
    status, body = error_of(lambda: api.create_function(namespace_id=ns.id, name="zero"))
    assert status == 409 and body["type"] == "already_exists" and body["resource_id"] == fn["id"], body
    status, body = error_of(lambda: raw(api, "PATCH", f"/functions/{fn['id']}", {"private_network_id": str(uuid.uuid4())}))
    assert status == 400 and body["details"][0]["argument_name"] == "private_network_id", body
    # The functions of a namespace, by the path the Serverless Framework's plugin lists them.
    listed = raw(api, "GET", f"/namespaces/{ns.id}/functions")
    assert [f["id"] for f in listed["functions"]] == [fn["id"]], listed
    api.delete_namespace(namespace_id=ns.id)
