//! The API's one route list. Each entry registers a handler at the method
//! and path of its `#[utoipa::path]` annotation and adds that annotation to
//! the OpenAPI document, so a route cannot exist undocumented, nor a
//! document entry without its route. The guard of each `/v1` route (scope,
//! rate-limit category) is named here too.

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use keyflow_core::Scope;
use utoipa::__dev::{SchemaReferences, Tags};
use utoipa::IntoResponses;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::SecurityRequirement;

use super::{
    audit, contacts, events, keys, metrics, metrics_access, metrics_credential, metrics_query,
    segment, subscribers, workflow_runs, workflows,
};
use crate::auth::Guard;
use crate::limits::Category;
use crate::state::SharedState;

/// A router and the OpenAPI document of exactly its routes.
pub struct ApiRoutes {
    pub router: Router<SharedState>,
    pub doc: OpenApi,
}

impl ApiRoutes {
    pub fn new(doc: OpenApi) -> Self {
        Self {
            router: Router::new(),
            doc,
        }
    }

    /// Serves `handler` where `P` (the `__path_<handler>` type that
    /// `#[utoipa::path]` generates) says, and documents it.
    pub fn add<P, H, T>(self, _doc: P, handler: H) -> Self
    where
        P: utoipa::Path + SchemaReferences + for<'t> Tags<'t>,
        H: Handler<T, SharedState>,
        T: 'static,
    {
        self.register::<P, H, T>(P::operation(), handler)
    }

    /// Serves `handler` behind `guard`, and documents what the guard
    /// enforces from the guard itself: the scope sentence that opens the
    /// description, the 401/403/429 refusals and the accepted credentials.
    /// The document cannot name a scope the route does not require.
    pub fn guarded<P, H, T>(self, _doc: P, guard: Guard, handler: H) -> Self
    where
        P: utoipa::Path + SchemaReferences + for<'t> Tags<'t>,
        H: Handler<T, SharedState>,
        T: 'static,
    {
        let mut operation = P::operation();
        document_guard(&guard, &mut operation);
        self.register::<P, _, _>(operation, guard.wrap(handler))
    }

    /// An `/admin/v1` route: behind the admin token (the router's layer),
    /// documented with its refusals, its credential and an `admin_` operation id.
    pub fn admin<P, H, T>(self, _doc: P, handler: H) -> Self
    where
        P: utoipa::Path + SchemaReferences + for<'t> Tags<'t>,
        H: Handler<T, SharedState>,
        T: 'static,
    {
        let mut operation = P::operation();
        operation.operation_id = operation.operation_id.map(|id| format!("admin_{id}"));
        operation.tags = Some(vec!["admin".into()]);
        operation.security = Some(vec![SecurityRequirement::new(
            "admin_token",
            Vec::<String>::new(),
        )]);
        operation
            .responses
            .responses
            .extend(super::openapi::AdminRefusals::responses());
        self.register::<P, H, T>(operation, handler)
    }

    fn register<P, H, T>(mut self, mut operation: Operation, handler: H) -> Self
    where
        P: utoipa::Path + SchemaReferences + for<'t> Tags<'t>,
        H: Handler<T, SharedState>,
        T: 'static,
    {
        // Every route with a body can refuse it before reading it.
        if operation.request_body.is_some() {
            for (status, response) in super::openapi::BodyRefusals::responses() {
                operation
                    .responses
                    .responses
                    .entry(status)
                    .or_insert(response);
            }
        }
        let (path, methods) = (P::path(), P::methods());
        // `tag = …` of the annotation (utoipa applies it only through its
        // own `OpenApi` derive, which this list replaces).
        operation
            .tags
            .get_or_insert_with(|| P::tags().into_iter().map(String::from).collect());
        let mut route = MethodRouter::new();
        for method in &methods {
            route = route.on(method_filter(method), handler.clone());
        }
        self.router = self.router.route(&path, route);
        let mut schemas = Vec::new();
        P::schemas(&mut schemas);
        let components = self.doc.components.get_or_insert_with(Default::default);
        components.schemas.extend(schemas);
        self.doc.paths.add_path_operation(path, methods, operation);
        self
    }

    /// Adds `other`'s routes and documentation.
    pub fn merge(mut self, other: ApiRoutes) -> Self {
        self.router = self.router.merge(other.router);
        self.doc.merge(other.doc);
        self
    }
}

fn method_filter(method: &HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}

/// Documents `guard` on `operation` (see [`ApiRoutes::guarded`]).
fn document_guard(guard: &Guard, operation: &mut Operation) {
    let scopes: Vec<String> = guard
        .scope
        .into_iter()
        .chain(guard.also.iter())
        .map(|scope| format!("`{}`", scope.as_str()))
        .collect();
    let sentence = match scopes.as_slice() {
        [] => None,
        [one] => Some(format!("Scope: {one}.")),
        [init @ .., last] => Some(format!("Scopes: {} and {last}.", init.join(", "))),
    };
    operation.description = match (sentence, operation.description.take()) {
        (Some(sentence), Some(more)) => Some(format!("{sentence} {more}")),
        (sentence, more) => sentence.or(more),
    };
    operation
        .responses
        .responses
        .extend(super::openapi::KeyRefusals::responses());
    if guard.allow_basic {
        let any = Vec::<String>::new;
        operation.security = Some(vec![
            SecurityRequirement::new("api_key", any()),
            SecurityRequirement::new("segment_basic", any()),
        ]);
    }
}

/// Every `/v1` route with the scope and rate-limit category it requires.
/// Where the handler spends the quota itself, it does so after checks that
/// must come first (an event the key may not send is refused uncharged).
pub fn v1(state: &SharedState) -> ApiRoutes {
    use Category::{Ingest, Management, Read, Write};
    let guard = |scope: Option<Scope>, category: Category| Guard::new(state, scope, category);
    let handler_spends = |scope: Scope, category: Category| {
        Guard::new(state, Some(scope), category).quota_spent_by_handler()
    };
    let segment = |scope: Scope, category: Category, handler_spends: bool| {
        let guard = Guard::new(state, Some(scope), category).basic_auth();
        if handler_spends {
            guard.quota_spent_by_handler()
        } else {
            guard
        }
    };
    let (contacts_read, contacts_write) = (Scope::ContactsRead, Scope::ContactsWrite);
    ApiRoutes::new(super::openapi::base())
        .guarded(
            contacts::__path_list_contacts,
            guard(Some(contacts_read), Read),
            contacts::list_contacts,
        )
        .guarded(
            contacts::__path_upsert_contact,
            guard(Some(contacts_write), Write),
            contacts::upsert_contact,
        )
        .guarded(
            contacts::__path_batch_contacts,
            guard(Some(contacts_write), Write),
            contacts::batch_contacts,
        )
        .guarded(
            contacts::__path_get_contact,
            guard(Some(contacts_read), Read),
            contacts::get_contact,
        )
        .guarded(
            contacts::__path_patch_contact,
            guard(Some(contacts_write), Write),
            contacts::patch_contact,
        )
        .guarded(
            contacts::__path_delete_contact,
            guard(Some(contacts_write), Write),
            contacts::delete_contact,
        )
        .guarded(
            events::__path_track,
            handler_spends(Scope::EventsWrite, Ingest),
            events::track,
        )
        .guarded(
            events::__path_list_events,
            guard(Some(Scope::EventsRead), Read),
            events::list_events,
        )
        .guarded(
            events::__path_track_batch,
            handler_spends(Scope::EventsWrite, Ingest),
            events::track_batch,
        )
        .guarded(
            subscribers::__path_list_subscribers,
            guard(Some(Scope::SubscribersRead), Read),
            subscribers::list_subscribers,
        )
        .guarded(
            subscribers::__path_signup,
            guard(Some(Scope::SubscribersWrite), Ingest),
            subscribers::signup,
        )
        .guarded(
            subscribers::__path_unsubscribe,
            guard(Some(Scope::SubscribersWrite), Ingest),
            subscribers::unsubscribe,
        )
        .guarded(
            segment::__path_track,
            segment(Scope::EventsWrite, Ingest, true),
            segment::track,
        )
        .guarded(
            segment::__path_identify,
            segment(contacts_write, Write, false),
            segment::identify,
        )
        .guarded(
            segment::__path_batch,
            segment(Scope::EventsWrite, Ingest, true),
            segment::batch,
        )
        .guarded(
            keys::__path_list_keys,
            guard(Some(Scope::KeysRead), Management),
            keys::list_keys,
        )
        .guarded(
            keys::__path_create_key,
            handler_spends(Scope::KeysWrite, Management),
            keys::create_key,
        )
        .guarded(
            keys::__path_get_self,
            guard(None, Management),
            keys::get_self,
        )
        .guarded(
            keys::__path_get_key,
            guard(Some(Scope::KeysRead), Management),
            keys::get_key,
        )
        .guarded(
            keys::__path_update_key,
            handler_spends(Scope::KeysWrite, Management),
            keys::update_key,
        )
        .guarded(
            keys::__path_revoke_key,
            handler_spends(Scope::KeysWrite, Management),
            keys::revoke_key,
        )
        .guarded(
            keys::__path_roll_key,
            handler_spends(Scope::KeysWrite, Management),
            keys::roll_key,
        )
        .guarded(
            metrics_credential::__path_create_or_rotate,
            handler_spends(Scope::KeysWrite, Management)
                .also(contacts_read)
                .also(Scope::EventsRead),
            metrics_credential::create_or_rotate,
        )
        .guarded(
            metrics_credential::__path_get_credential,
            guard(Some(Scope::KeysRead), Management),
            metrics_credential::get_credential,
        )
        .guarded(
            metrics_credential::__path_update_credential,
            handler_spends(Scope::KeysWrite, Management),
            metrics_credential::update_credential,
        )
        .add(metrics_access::__path_exchange, metrics_access::exchange)
        .merge(metric_routes(state))
        .guarded(
            audit::__path_list_audit,
            guard(Some(Scope::AuditRead), Management),
            audit::list_audit,
        )
        .merge(workflow_routes(state))
}

/// `/v1/workflows` (SPEC §10): management-category calls.
fn workflow_routes(state: &SharedState) -> ApiRoutes {
    let (read, write) = (
        || Guard::new(state, Some(Scope::WorkflowsRead), Category::Management),
        || Guard::new(state, Some(Scope::WorkflowsWrite), Category::Management),
    );
    ApiRoutes::new(utoipa::openapi::OpenApi::default())
        .guarded(
            workflows::__path_create_workflow,
            write(),
            workflows::create_workflow,
        )
        .guarded(
            workflows::__path_list_workflows,
            read(),
            workflows::list_workflows,
        )
        .guarded(
            workflows::__path_get_workflow,
            read(),
            workflows::get_workflow,
        )
        .guarded(
            workflows::__path_update_workflow,
            write(),
            workflows::update_workflow,
        )
        .guarded(
            workflows::__path_archive_workflow,
            write(),
            workflows::archive_workflow,
        )
        .guarded(
            workflows::__path_rotate_signing_secret,
            write(),
            workflows::rotate_signing_secret,
        )
        .guarded(
            workflow_runs::__path_trigger_workflow,
            Guard::new(state, Some(Scope::WorkflowsWrite), Category::Write),
            workflow_runs::trigger_workflow,
        )
        .guarded(
            workflow_runs::__path_list_runs,
            read(),
            workflow_runs::list_runs,
        )
        .guarded(
            workflow_runs::__path_get_run,
            read(),
            workflow_runs::get_run,
        )
        .guarded(
            workflow_runs::__path_cancel_run,
            write(),
            workflow_runs::cancel_run,
        )
        .guarded(
            workflow_runs::__path_retry_run,
            write(),
            workflow_runs::retry_run,
        )
}

/// The routes behind a Metrics API access token ([`metrics_access::require_token`]),
/// layered on each handler so a wrong method is still 405 before any token check.
fn metric_routes(state: &SharedState) -> ApiRoutes {
    let token =
        || axum::middleware::from_fn_with_state(state.clone(), metrics_access::require_token);
    ApiRoutes::new(utoipa::openapi::OpenApi::default())
        .add(
            metrics_query::__path_get_schema,
            metrics_query::get_schema.layer(token()),
        )
        .add(
            metrics_query::__path_run_query,
            metrics_query::run_query.layer(token()),
        )
        .add(
            metrics::__path_get_metric,
            metrics::get_metric.layer(token()),
        )
}
