//! The API's one route list. Each entry registers a handler at the method
//! and path of its `#[utoipa::path]` annotation and adds that annotation to
//! the OpenAPI document, so a route cannot exist undocumented, nor a
//! document entry without its route. The guard of each `/v1` route (scope,
//! rate-limit category) is named here too.

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};
use keyflow_core::Scope;
use utoipa::__dev::SchemaReferences;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::HttpMethod;

use super::{audit, contacts, events, keys, metrics_credential, segment, subscribers};
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
    pub fn add<P, H, T>(mut self, _doc: P, handler: H) -> Self
    where
        P: utoipa::Path + SchemaReferences,
        H: Handler<T, SharedState>,
        T: 'static,
    {
        let (path, methods) = (P::path(), P::methods());
        let mut route = MethodRouter::new();
        for method in &methods {
            route = route.on(method_filter(method), handler.clone());
        }
        self.router = self.router.route(&path, route);
        let mut schemas = Vec::new();
        P::schemas(&mut schemas);
        let components = self.doc.components.get_or_insert_with(Default::default);
        components.schemas.extend(schemas);
        self.doc
            .paths
            .add_path_operation(path, methods, P::operation());
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
        .add(
            contacts::__path_list_contacts,
            guard(Some(contacts_read), Read).wrap(contacts::list_contacts),
        )
        .add(
            contacts::__path_upsert_contact,
            guard(Some(contacts_write), Write).wrap(contacts::upsert_contact),
        )
        .add(
            contacts::__path_batch_contacts,
            guard(Some(contacts_write), Write).wrap(contacts::batch_contacts),
        )
        .add(
            contacts::__path_get_contact,
            guard(Some(contacts_read), Read).wrap(contacts::get_contact),
        )
        .add(
            contacts::__path_patch_contact,
            guard(Some(contacts_write), Write).wrap(contacts::patch_contact),
        )
        .add(
            contacts::__path_delete_contact,
            guard(Some(contacts_write), Write).wrap(contacts::delete_contact),
        )
        .add(
            events::__path_track,
            handler_spends(Scope::EventsWrite, Ingest).wrap(events::track),
        )
        .add(
            events::__path_list_events,
            guard(Some(Scope::EventsRead), Read).wrap(events::list_events),
        )
        .add(
            events::__path_track_batch,
            handler_spends(Scope::EventsWrite, Ingest).wrap(events::track_batch),
        )
        .add(
            subscribers::__path_list_subscribers,
            guard(Some(Scope::SubscribersRead), Read).wrap(subscribers::list_subscribers),
        )
        .add(
            subscribers::__path_signup,
            guard(Some(Scope::SubscribersWrite), Ingest).wrap(subscribers::signup),
        )
        .add(
            subscribers::__path_unsubscribe,
            guard(Some(Scope::SubscribersWrite), Ingest).wrap(subscribers::unsubscribe),
        )
        .add(
            segment::__path_track,
            segment(Scope::EventsWrite, Ingest, true).wrap(segment::track),
        )
        .add(
            segment::__path_identify,
            segment(contacts_write, Write, false).wrap(segment::identify),
        )
        .add(
            segment::__path_batch,
            segment(Scope::EventsWrite, Ingest, true).wrap(segment::batch),
        )
        .add(
            keys::__path_list_keys,
            guard(Some(Scope::KeysRead), Management).wrap(keys::list_keys),
        )
        .add(
            keys::__path_create_key,
            handler_spends(Scope::KeysWrite, Management).wrap(keys::create_key),
        )
        .add(
            keys::__path_get_self,
            guard(None, Management).wrap(keys::get_self),
        )
        .add(
            keys::__path_get_key,
            guard(Some(Scope::KeysRead), Management).wrap(keys::get_key),
        )
        .add(
            keys::__path_update_key,
            handler_spends(Scope::KeysWrite, Management).wrap(keys::update_key),
        )
        .add(
            keys::__path_revoke_key,
            handler_spends(Scope::KeysWrite, Management).wrap(keys::revoke_key),
        )
        .add(
            keys::__path_roll_key,
            handler_spends(Scope::KeysWrite, Management).wrap(keys::roll_key),
        )
        .add(
            metrics_credential::__path_create_or_rotate,
            handler_spends(Scope::KeysWrite, Management)
                .also(contacts_read)
                .also(Scope::EventsRead)
                .wrap(metrics_credential::create_or_rotate),
        )
        .add(
            metrics_credential::__path_get_credential,
            guard(Some(Scope::KeysRead), Management).wrap(metrics_credential::get_credential),
        )
        .add(
            metrics_credential::__path_update_credential,
            handler_spends(Scope::KeysWrite, Management)
                .wrap(metrics_credential::update_credential),
        )
        .add(
            audit::__path_list_audit,
            guard(Some(Scope::AuditRead), Management).wrap(audit::list_audit),
        )
}
