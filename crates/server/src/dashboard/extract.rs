//! Who may see a page, as extractors: a handler names what it needs and
//! receives it, or the request is answered with the right page instead
//! (sign-in redirect, 403, cross-site refusal).
//!
//! - [`Viewer`]: signed in, with a project of their workspace (`?project=`,
//!   else the first one); any role.
//! - [`Manager`]: a viewer who is an owner or admin.
//! - [`ManagerForm`]: a form post by a manager: same-origin first (a
//!   cross-site post learns nothing), then session and role, then the form's
//!   CSRF token. The project comes from the form's `project` field.

use std::collections::HashMap;

use axum::extract::{Form, FromRequest, FromRequestParts, Query, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use keyflow_store::{Actor, Membership, Project};

use super::page::{Chrome, OperatorChrome, PageError};
use super::session::{self, SignedIn};
use crate::error::ApiError;
use crate::state::SharedState;

/// A signed-in operator looking at one project of their workspace.
pub struct Viewer {
    pub signed_in: SignedIn,
    pub membership: Membership,
    pub project: Project,
    pub projects: Vec<Project>,
    /// What the change that redirected here did (`?done=`), shown at the
    /// top of the page: fixed words, never text from the URL.
    pub notice: Option<&'static str>,
}

impl Viewer {
    async fn load(
        state: &SharedState,
        headers: &HeaderMap,
        project: Option<&String>,
    ) -> Result<Self, PageError> {
        let signed_in = session::current(state, headers)
            .await?
            .ok_or(PageError::SignIn(None))?;
        let memberships = state.store.list_memberships(&signed_in.operator.id).await?;
        let Some(membership) = memberships.into_iter().next() else {
            // Signed in, but removed from every workspace since.
            return Err(PageError::Forbidden {
                chrome: Box::new(chrome_of(&signed_in, "", "No workspace")),
                heading: "No workspace",
                text: "You are not a member of any workspace yet.",
            });
        };
        let projects = state.store.list_projects(&membership.workspace_id).await?;
        let chosen = match project {
            Some(id) => projects.iter().find(|p| &p.id == id).cloned(),
            None => projects.first().cloned(),
        };
        let project = chosen.ok_or_else(|| ApiError::not_found("project"))?;
        Ok(Self {
            signed_in,
            membership,
            project,
            projects,
            notice: None,
        })
    }

    /// The layout of a signed-in page titled `title`, with `current` marked.
    pub fn chrome(&self, current: &'static str, title: &str) -> Chrome {
        let mut chrome = chrome_of(&self.signed_in, current, title);
        chrome.notice = self.notice;
        if let Some(operator) = chrome.operator.as_mut() {
            operator.project = Some(self.project.id.clone());
            operator.manager = self.membership.role.can_manage();
        }
        chrome
    }

    pub fn csrf(&self) -> &str {
        &self.signed_in.session.csrf_token
    }

    pub fn workspace_id(&self) -> &str {
        &self.membership.workspace_id
    }

    pub fn actor(&self) -> Actor {
        Actor::Operator {
            id: self.signed_in.operator.id.clone(),
            email: self.signed_in.operator.email.clone(),
        }
    }

    fn require_manager(self) -> Result<Self, PageError> {
        if self.membership.role.can_manage() {
            return Ok(self);
        }
        Err(PageError::Forbidden {
            chrome: Box::new(self.chrome("", "Forbidden")),
            heading: "Owners and admins only",
            text: "Ask an owner or admin of this workspace for access to this page.",
        })
    }
}

fn chrome_of(signed_in: &SignedIn, current: &'static str, title: &str) -> Chrome {
    Chrome {
        title: title.to_string(),
        current,
        operator: Some(OperatorChrome {
            email: signed_in.operator.email.clone(),
            csrf: signed_in.session.csrf_token.clone(),
            project: None,
            manager: false,
        }),
        notice: None,
    }
}

impl FromRequestParts<SharedState> for Viewer {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, PageError> {
        let Query(query) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .unwrap_or_default();
        let mut viewer = match Self::load(state, &parts.headers, query.get("project")).await {
            // A page asked for without a session comes back after sign-in.
            Err(PageError::SignIn(_)) if parts.method == axum::http::Method::GET => {
                let asked = parts.uri.path_and_query().map(|p| p.as_str().to_string());
                return Err(PageError::SignIn(
                    asked.filter(|p| super::page::safe_next(p).is_some()),
                ));
            }
            other => other?,
        };
        viewer.notice = super::page::done_notice(&query);
        Ok(viewer)
    }
}

/// A [`Viewer`] who is an owner or admin of the workspace.
pub struct Manager(pub Viewer);

impl FromRequestParts<SharedState> for Manager {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, PageError> {
        let viewer = Viewer::from_request_parts(parts, state).await?;
        Ok(Self(viewer.require_manager()?))
    }
}

/// A member's form post, checked (see the module comment), with its fields:
/// for forms every member may send (they change nothing only managers may).
pub struct ViewerForm {
    pub viewer: Viewer,
    /// Every field in order (repeated names, such as checkboxes, kept).
    pub pairs: Vec<(String, String)>,
    /// The last value of each field.
    pub values: HashMap<String, String>,
    /// The client's address (per SPEC §2), for the audit log.
    pub ip: Option<String>,
    /// The address the browser reached Keyflow at (`Origin`, checked equal
    /// to `Host`), for copy-ready examples; `None` when it sent none.
    pub origin: Option<String>,
}

impl ViewerForm {
    /// The context of the change this form asks for.
    pub fn ctx<'s>(&self, state: &'s SharedState) -> crate::operations::Ctx<'s> {
        state.ctx(self.viewer.actor(), self.ip.clone(), state.now_ms())
    }

    /// A field's value, or `""`.
    pub fn field(&self, name: &str) -> &str {
        self.values.get(name).map(String::as_str).unwrap_or("")
    }
}

impl FromRequest<SharedState> for ViewerForm {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, PageError> {
        if !session::same_origin(req.headers()) {
            return Err(PageError::CrossSite);
        }
        let headers = req.headers().clone();
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        let ip = crate::auth::client_ip(state, peer, &headers).map(|ip| ip.to_string());
        let origin = headers
            .get(axum::http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .filter(|o| o.starts_with("http://") || o.starts_with("https://"))
            .map(str::to_string);
        let Form(pairs) = Form::<Vec<(String, String)>>::from_request(req, state)
            .await
            .map_err(|_| ApiError::field("form", "is not a valid form"))?;
        let values: HashMap<String, String> = pairs.iter().cloned().collect();
        let viewer = Viewer::load(state, &headers, values.get("project")).await?;
        if !session::csrf_ok(
            &viewer.signed_in.session,
            values.get("csrf").map(String::as_str),
        ) {
            return Err(PageError::CrossSite);
        }
        Ok(Self {
            viewer,
            pairs,
            values,
            ip,
            origin,
        })
    }
}

/// A manager's form post: a [`ViewerForm`] from an owner or admin.
pub struct ManagerForm(ViewerForm);

impl std::ops::Deref for ManagerForm {
    type Target = ViewerForm;
    fn deref(&self) -> &ViewerForm {
        &self.0
    }
}

impl FromRequest<SharedState> for ManagerForm {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, PageError> {
        let mut form = ViewerForm::from_request(req, state).await?;
        form.viewer = form.viewer.require_manager()?;
        Ok(Self(form))
    }
}
