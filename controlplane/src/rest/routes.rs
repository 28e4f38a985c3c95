//! The routes and their handlers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxState};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::list::ListQuery;
use super::views::{self, Site};
use super::{ApiError, Id, Region};
use crate::error::Error;
use crate::model::Function;
use crate::{crons, domains, functions, namespaces, tokens, triggers, Ctx};

type Answer = Result<Json<Value>, ApiError>;
type Ax = AxState<Arc<Ctx>>;

/// The management API's router (admin key required on every route).
pub fn router(ctx: Arc<Ctx>) -> Router {
    let r = Router::new()
        .route("/namespaces", get(list_namespaces).post(create_namespace))
        .route("/namespaces/{id}", get(get_namespace).patch(update_namespace).delete(delete_namespace))
        .route("/namespaces/{id}/functions", get(list_namespace_functions))
        .route("/functions", get(list_functions).post(create_function))
        .route("/functions/{id}", get(get_function).patch(update_function).delete(delete_function))
        .route("/functions/{id}/deploy", post(deploy_function))
        .route(
            "/functions/{id}/invoke",
            post(super::invoke::invoke)
                .layer(axum::extract::DefaultBodyLimit::max(ctx.cfg.max_body_bytes as usize)),
        )
        .route("/functions/{id}/upload-url", get(super::code::upload_url))
        .route("/functions/{id}/download-url", get(super::code::download_url))
        .route("/runtimes", get(list_runtimes))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", get(get_token).delete(delete_token))
        .route("/crons", get(list_crons).post(create_cron))
        .route("/crons/{id}", get(get_cron).patch(update_cron).delete(delete_cron))
        .route("/domains", get(list_domains).post(create_domain))
        .route("/domains/{id}", get(get_domain).delete(delete_domain))
        .route("/triggers", get(list_triggers).post(create_trigger))
        .route("/triggers/{id}", get(get_trigger).patch(update_trigger).delete(delete_trigger));
    let admin = Router::new()
        .nest("/functions/v1beta1/regions/{region}", r)
        .route("/fnrt/v1/agents", get(super::cluster::agents))
        .route("/fnrt/v1/placement", get(super::cluster::placement))
        .route("/fnrt/v1/replica", get(super::cluster::replica))
        .route("/fnrt/v1/functions/{id}/logs", get(super::logs::logs))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), super::admin_only));
    // The registry has its own token, code URLs their signature: not the admin key.
    Router::new()
        .route("/fnrt/v1/openapi.json", get(super::openapi::serve))
        .route("/fnrt/v1/registry-events", post(super::webhook::events))
        .route("/fnrt/v1/code/{id}", axum::routing::put(super::code::put_code).get(super::code::get_code))
        .layer(axum::extract::DefaultBodyLimit::max(crate::build::code::MAX_ZIP_BYTES as usize + 1))
        .merge(admin)
        .layer(axum::middleware::map_response(super::error::json_shape))
        // Outermost of the router's layers: it sees every answer, refusals of the admin
        // check included, by its route's template.
        .layer(axum::middleware::from_fn_with_state(ctx.scheduler.metrics.clone(), crate::metrics::track_api))
        .with_state(ctx)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(Error::NotFound { resource: "path", id: uri.path().to_string() })
}

fn site(ctx: &Ctx) -> Site<'_> {
    Site { region: &ctx.cfg.region, domain: &ctx.cfg.domain, registry: &ctx.cfg.registry }
}

/// A request body: a JSON object, an empty body being `{}`.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Error> {
    super::json_object(if bytes.is_empty() { &b"{}"[..] } else { bytes }, "the JSON this call takes")
}

/// Whether `f` is a code function with code uploaded (here, or shared by another replica).
fn has_code(ctx: &Ctx, f: &Function) -> bool {
    ctx.cfg.runtime_image(&f.runtime).is_some()
        && (f.code_digest.is_some() || super::code::zip_path(ctx, &f.id).exists())
}

fn function_view(ctx: &Ctx, f: &Function, status: Option<&str>) -> Value {
    let (ns, class) = ctx
        .state
        .read(|d| d.namespaces.get(&f.namespace_id).map(|n| (n.name.clone(), f.sandbox_class_in(n))))
        .unwrap_or_else(|| (String::new(), crate::sandbox::effective(f.sandbox_class, None)));
    // The last start failure first (it is why calls fail now), then the deploy's advice.
    let mut shown = f.clone();
    if let Some(failure) = ctx.scheduler.start_failure(&f.agent_name()) {
        let advice = f.runtime_message.as_deref().map(|a| format!("; {a}")).unwrap_or_default();
        shown.runtime_message = Some(format!("instances fail to start {failure}{advice}"));
    }
    // A code function whose image is being built is `creating`, then `pending`.
    let status = status.or_else(|| ctx.scheduler.is_building(&f.id).then_some("creating"));
    views::function(&shown, &ns, class, &site(ctx), status)
}

/// Sorts by creation time or name, as `order_by` says.
fn order<T>(items: &mut [T], order_by: &str, created: impl Fn(&T) -> String, name: impl Fn(&T) -> String) {
    match order_by {
        "name_asc" | "hostname_asc" => items.sort_by_key(|a| name(a)),
        "name_desc" | "hostname_desc" => items.sort_by_key(|b| std::cmp::Reverse(name(b))),
        "created_at_desc" => items.sort_by_key(|b| std::cmp::Reverse(created(b))),
        _ => items.sort_by_key(|a| created(a)),
    }
}

const NAMED_ORDERS: &[&str] = &["created_at_asc", "created_at_desc", "name_asc", "name_desc"];
const TIME_ORDERS: &[&str] = &["created_at_asc", "created_at_desc"];

async fn list_namespaces(AxState(ctx): Ax, _r: Region, RawQuery(q): RawQuery) -> Answer {
    let q = ListQuery::parse(q.as_deref(), NAMED_ORDERS)?;
    let mut items = ctx.state.read(|d| {
        d.namespaces
            .values()
            .filter(|n| q.filter("name").is_none_or(|name| n.name.contains(name)))
            .filter(|n| q.filter("project_id").is_none_or(|p| n.project_id == p))
            .cloned()
            .collect::<Vec<_>>()
    });
    order(&mut items, &q.order_by, |n| views::time(&n.created_at), |n| n.name.clone());
    // The name filter matches parts of names; clients that look a namespace up by its name
    // take the first one (the Serverless Framework's plugin does): the exact one comes first.
    if let Some(name) = q.filter("name") {
        items.sort_by_key(|n| n.name != name);
    }
    let site = site(&ctx);
    Ok(Json(q.page("namespaces", items.iter().map(|n| views::namespace(n, &site, "ready")).collect())))
}

async fn create_namespace(AxState(ctx): Ax, _r: Region, b: Bytes) -> Answer {
    let ns = namespaces::create(&ctx.state, body(&b)?, &ctx.scheduler.offered()).await?;
    Ok(Json(views::namespace(&ns, &site(&ctx), "ready")))
}

async fn get_namespace(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    Ok(Json(views::namespace(&namespaces::get(&ctx.state, &id)?, &site(&ctx), "ready")))
}

async fn update_namespace(AxState(ctx): Ax, _r: Region, Id(id): Id, b: Bytes) -> Answer {
    let (ns, changed) = namespaces::update(&ctx.state, &id, body(&b)?, &ctx.scheduler.offered()).await?;
    if changed {
        // Its deployed functions get the new variables and secrets now, as on Scaleway.
        let deployed: Vec<String> = ctx.state.read(|d| {
            d.functions
                .values()
                .filter(|f| f.namespace_id == id && f.deployed.is_some())
                .map(|f| f.id.clone())
                .collect()
        });
        for fid in deployed {
            match functions::start_deploy(&ctx.state, &fid, |f| has_code(&ctx, f)).await {
                Ok(_) => ctx.scheduler.deploy(&fid),
                Err(e) => {
                    tracing::warn!(function = %fid, error = %e, "not deployed again after its namespace changed")
                }
            }
        }
    }
    Ok(Json(views::namespace(&ns, &site(&ctx), "ready")))
}

async fn delete_namespace(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    let ns = namespaces::delete(&ctx.state, &id).await?;
    Ok(Json(views::namespace(&ns, &site(&ctx), "deleting")))
}

async fn list_functions(AxState(ctx): Ax, _r: Region, RawQuery(q): RawQuery) -> Answer {
    let q = ListQuery::parse(q.as_deref(), NAMED_ORDERS)?;
    let mut items = ctx.state.read(|d| {
        d.functions
            .values()
            .filter(|f| q.filter("namespace_id").is_none_or(|n| f.namespace_id == n))
            .filter(|f| q.filter("name").is_none_or(|name| f.name.contains(name)))
            .cloned()
            .collect::<Vec<_>>()
    });
    order(&mut items, &q.order_by, |f| views::time(&f.created_at), |f| f.name.clone());
    Ok(Json(q.page("functions", items.iter().map(|f| function_view(&ctx, f, None)).collect())))
}

/// `GET .../namespaces/{id}/functions`: the functions of one namespace (the path the
/// Serverless Framework's Scaleway plugin lists them by).
async fn list_namespace_functions(AxState(ctx): Ax, _r: Region, Id(id): Id, RawQuery(q): RawQuery) -> Answer {
    namespaces::get(&ctx.state, &id)?;
    let q = ListQuery::parse(q.as_deref(), NAMED_ORDERS)?;
    let mut items = ctx.state.read(|d| {
        d.functions
            .values()
            .filter(|f| f.namespace_id == id)
            .filter(|f| q.filter("name").is_none_or(|name| f.name.contains(name)))
            .cloned()
            .collect::<Vec<_>>()
    });
    order(&mut items, &q.order_by, |f| views::time(&f.created_at), |f| f.name.clone());
    Ok(Json(q.page("functions", items.iter().map(|f| function_view(&ctx, f, None)).collect())))
}

async fn create_function(AxState(ctx): Ax, _r: Region, b: Bytes) -> Answer {
    let input = body(&b)?;
    functions::check_image(&ctx.scheduler.registry, &input)?;
    let offered = ctx.scheduler.offered();
    let f = functions::create(&ctx.state, input, ctx.cfg.max_accelerated_functions, &offered).await?;
    Ok(Json(function_view(&ctx, &f, None)))
}

async fn get_function(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    Ok(Json(function_view(&ctx, &functions::get(&ctx.state, &id)?, None)))
}

async fn update_function(AxState(ctx): Ax, _r: Region, Id(id): Id, b: Bytes) -> Answer {
    let input = body(&b)?;
    functions::check_image(&ctx.scheduler.registry, &input)?;
    let offered = ctx.scheduler.offered();
    let (mut f, redeploy) =
        functions::update(&ctx.state, &id, input, ctx.cfg.max_accelerated_functions, &offered).await?;
    if redeploy {
        f = functions::start_deploy(&ctx.state, &id, |f| has_code(&ctx, f)).await?;
        ctx.scheduler.deploy(&id);
    }
    Ok(Json(function_view(&ctx, &f, None)))
}

async fn delete_function(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    let f = functions::delete(&ctx.state, &id).await?;
    Ok(Json(function_view(&ctx, &f, Some("deleting"))))
}

async fn deploy_function(AxState(ctx): Ax, _r: Region, Id(id): Id, b: Bytes) -> Answer {
    // Scaleway's DeployFunctionRequest has no fields: `{}` or nothing.
    body::<serde_json::Map<String, Value>>(&b)?;
    let f = functions::start_deploy(&ctx.state, &id, |f| has_code(&ctx, f)).await?;
    ctx.scheduler.deploy(&id);
    Ok(Json(function_view(&ctx, &f, None)))
}

/// The code runtimes whose base image is in the registry.
async fn list_runtimes(AxState(ctx): Ax, _r: Region) -> Answer {
    let mut runtimes = Vec::new();
    for rt in crate::runtimes::RUNTIMES {
        let (name, language, version, handler) = (rt.name, rt.language, rt.version, rt.default_handler);
        // Go code is compiled here at deploy: not offered without a toolchain.
        if name == "go119" && crate::build::golang::toolchain().is_none() {
            continue;
        }
        let Some(image) = ctx.cfg.runtime_image(name) else { continue };
        if crate::build::image::exists(&ctx.scheduler.registry, &image).await {
            runtimes.push(json!({
                "name": name, "language": language, "version": version, "default_handler": handler,
                "code_sample": "", "status": "available", "status_message": "", "extension": "zip",
                "implementation": image, "logo_url": "",
            }));
        }
    }
    let n = runtimes.len();
    Ok(Json(json!({ "runtimes": runtimes, "total_count": n })))
}

async fn list_tokens(AxState(ctx): Ax, _r: Region, RawQuery(q): RawQuery) -> Answer {
    let q = ListQuery::parse(q.as_deref(), TIME_ORDERS)?;
    let mut items = ctx.state.read(|d| {
        d.tokens
            .values()
            .filter(|t| q.filter("function_id").is_none_or(|f| t.function_id.as_deref() == Some(f)))
            .filter(|t| q.filter("namespace_id").is_none_or(|n| t.namespace_id.as_deref() == Some(n)))
            .cloned()
            .collect::<Vec<_>>()
    });
    order(&mut items, &q.order_by, |t| views::time(&t.created_at), |t| t.id.clone());
    Ok(Json(q.page("tokens", items.iter().map(|t| views::token(t, None, "ready")).collect())))
}

async fn create_token(AxState(ctx): Ax, _r: Region, b: Bytes) -> Answer {
    let (t, secret) = tokens::create(&ctx.state, body(&b)?).await?;
    Ok(Json(views::token(&t, Some(&secret), "ready")))
}

async fn get_token(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    Ok(Json(views::token(&tokens::get(&ctx.state, &id)?, None, "ready")))
}

async fn delete_token(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    Ok(Json(views::token(&tokens::delete(&ctx.state, &id).await?, None, "deleting")))
}

async fn list_crons(AxState(ctx): Ax, _r: Region, RawQuery(q): RawQuery) -> Answer {
    let q = ListQuery::parse(q.as_deref(), TIME_ORDERS)?;
    let mut items = ctx.state.read(|d| {
        d.crons
            .values()
            .filter(|c| q.filter("function_id").is_none_or(|f| c.function_id == f))
            .cloned()
            .collect::<Vec<_>>()
    });
    order(&mut items, &q.order_by, |c| views::time(&c.created_at), |c| c.name.clone());
    Ok(Json(q.page(
        "crons",
        items.iter().map(|c| views::cron(c, "ready", ctx.scheduler.cron_error(&c.id))).collect(),
    )))
}

async fn create_cron(AxState(ctx): Ax, _r: Region, b: Bytes) -> Answer {
    let c = crons::create(&ctx.state, body(&b)?).await?;
    Ok(Json(views::cron(&c, "ready", None)))
}

async fn get_cron(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    Ok(Json(views::cron(&crons::get(&ctx.state, &id)?, "ready", ctx.scheduler.cron_error(&id))))
}

async fn update_cron(AxState(ctx): Ax, _r: Region, Id(id): Id, b: Bytes) -> Answer {
    let c = crons::update(&ctx.state, &id, body(&b)?).await?;
    Ok(Json(views::cron(&c, "ready", ctx.scheduler.cron_error(&id))))
}

async fn delete_cron(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    let c = crons::delete(&ctx.state, &id).await?;
    ctx.scheduler.forget_cron(&id);
    Ok(Json(views::cron(&c, "deleting", None)))
}

const DOMAIN_ORDERS: &[&str] = &["created_at_asc", "created_at_desc", "hostname_asc", "hostname_desc"];

async fn list_domains(AxState(ctx): Ax, _r: Region, RawQuery(q): RawQuery) -> Answer {
    let q = ListQuery::parse(q.as_deref(), DOMAIN_ORDERS)?;
    let mut items = ctx.state.read(|d| {
        d.domains
            .values()
            .filter(|x| q.filter("function_id").is_none_or(|f| x.function_id == f))
            .cloned()
            .collect::<Vec<_>>()
    });
    order(&mut items, &q.order_by, |x| views::time(&x.created_at), |x| x.hostname.clone());
    Ok(Json(q.page("domains", items.iter().map(|x| views::domain(x, "ready")).collect())))
}

async fn create_domain(AxState(ctx): Ax, _r: Region, b: Bytes) -> Answer {
    Ok(Json(views::domain(&domains::create(&ctx.state, body(&b)?, &ctx.cfg.domain).await?, "ready")))
}

async fn get_domain(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    Ok(Json(views::domain(&domains::get(&ctx.state, &id)?, "ready")))
}

async fn delete_domain(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    Ok(Json(views::domain(&domains::delete(&ctx.state, &id).await?, "deleting")))
}

fn trigger_view(ctx: &Ctx, t: &crate::model::Trigger, deleting: bool) -> Value {
    views::trigger(t, ctx.scheduler.trigger_error(&t.id), deleting)
}

async fn list_triggers(AxState(ctx): Ax, _r: Region, RawQuery(q): RawQuery) -> Answer {
    let q = ListQuery::parse(q.as_deref(), TIME_ORDERS)?;
    let mut items = ctx.state.read(|d| {
        d.triggers
            .values()
            .filter(|t| q.filter("function_id").is_none_or(|f| t.function_id == f))
            .filter(|t| {
                q.filter("namespace_id")
                    .is_none_or(|n| d.functions.get(&t.function_id).is_some_and(|f| f.namespace_id == n))
            })
            .cloned()
            .collect::<Vec<_>>()
    });
    order(&mut items, &q.order_by, |t| views::time(&t.created_at), |t| t.name.clone());
    Ok(Json(q.page("triggers", items.iter().map(|t| trigger_view(&ctx, t, false)).collect())))
}

async fn create_trigger(AxState(ctx): Ax, _r: Region, b: Bytes) -> Answer {
    let t = triggers::create(&ctx.state, body(&b)?, !ctx.cfg.nats_url.is_empty()).await?;
    Ok(Json(trigger_view(&ctx, &t, false)))
}

async fn get_trigger(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    Ok(Json(trigger_view(&ctx, &triggers::get(&ctx.state, &id)?, false)))
}

async fn update_trigger(AxState(ctx): Ax, _r: Region, Id(id): Id, b: Bytes) -> Answer {
    Ok(Json(trigger_view(&ctx, &triggers::update(&ctx.state, &id, body(&b)?).await?, false)))
}

async fn delete_trigger(AxState(ctx): Ax, _r: Region, Id(id): Id) -> Answer {
    Ok(Json(trigger_view(&ctx, &triggers::delete(&ctx.state, &id).await?, true)))
}
