//! `/api/v1/users` and `/api/v1/embed-keys`: the people the gateway lets in, their tenant
//! memberships, and the keys customer webapps sign embed tokens with.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pug_auth::{embed, GrafanaRole};
use pug_store::StoreError;
use pug_types::{ExposeSecret, InvalidInput, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ApiError, ApiState, ErrorBody};

/// A new pug user.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1–64 of `a-z 0-9 . _ @ -`: the login in every tenant's Grafana.
    pub name: String,
    pub email: String,
    /// At least 8 characters; stored only as an argon2id hash.
    pub password: String,
    /// Shown in Grafana (default: the name).
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A user and their memberships (never the password hash).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    pub name: String,
    pub email: String,
    pub display_name: String,
    /// Tenant id → Grafana role.
    pub tenants: std::collections::BTreeMap<String, String>,
    pub created_at_ms: i64,
}

/// A membership change.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `Viewer`, `Editor` or `Admin`.
    pub role: String,
}

/// A new embed key.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEmbedKey {
    /// A name to recognise it by (e.g. the webapp's).
    pub name: String,
    /// Restrict the key to one tenant (default: it may sign for any tenant).
    #[serde(default)]
    pub tenant: Option<String>,
    /// `HS256` (default: pug makes a shared secret) or `EdDSA` (Ed25519: pug keeps only the
    /// public key).
    #[serde(default)]
    pub algorithm: Option<String>,
    /// EdDSA only: the webapp's Ed25519 public key in PEM. Without it pug makes a key pair and
    /// returns the private key once.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// An embed key. `key` is present only in the answer to its creation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmbedKey {
    /// Put it in the token header as `kid`.
    pub id: String,
    pub name: String,
    pub tenant: Option<String>,
    pub created_at_ms: i64,
    /// `HS256` or `EdDSA`: the `alg` of the tokens this key signs.
    pub algorithm: String,
    /// The HS256 signing key. pug shows it once: store it in the webapp's secrets now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// EdDSA: the public key tokens are verified with (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// EdDSA, when pug made the key pair: the private key (PKCS#8 PEM), shown once; pug does
    /// not keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

/// An API error, or a 404 for a user, membership or key (the shared `ApiError::NotFound`
/// speaks of tenants).
pub(crate) enum UsersError {
    Api(ApiError),
    NotFound(String),
}

impl From<JsonRejection> for UsersError {
    fn from(e: JsonRejection) -> Self {
        UsersError::Api(e.into())
    }
}

impl IntoResponse for UsersError {
    fn into_response(self) -> Response {
        match self {
            UsersError::Api(e) => e.into_response(),
            UsersError::NotFound(message) => (
                StatusCode::NOT_FOUND,
                Json(ErrorBody {
                    error: message,
                    field: None,
                }),
            )
                .into_response(),
        }
    }
}

fn store_error(e: StoreError) -> UsersError {
    match e {
        StoreError::NotFound { kind: "user", id } => UsersError::NotFound(format!(
            "user {id} does not exist; create it with pug user create"
        )),
        StoreError::AlreadyExists(what) => {
            UsersError::Api(ApiError::Conflict(format!("{what} already exists")))
        }
        other => UsersError::Api(other.into()),
    }
}

fn tenant_id(s: &str) -> Result<TenantId, UsersError> {
    TenantId::parse(s).map_err(|e| UsersError::Api(e.into()))
}

fn info(u: pug_store::User) -> UserInfo {
    UserInfo {
        name: u.name,
        email: u.email,
        display_name: u.display_name,
        tenants: u.memberships,
        created_at_ms: u.created_at_ms,
    }
}

async fn find_user(state: &ApiState, name: &str) -> Result<UserInfo, UsersError> {
    state
        .store
        .users()
        .await
        .map_err(store_error)?
        .into_iter()
        .find(|u| u.name == name)
        .map(info)
        .ok_or_else(|| UsersError::NotFound(format!("user {name} does not exist")))
}

/// Creates a user.
#[utoipa::path(post, path = "/api/v1/users", request_body = NewUser,
    responses((status = 201, body = UserInfo), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create_user(
    State(state): State<ApiState>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<impl IntoResponse, UsersError> {
    let Json(req) = body?;
    let name = req.name.trim().to_owned();
    pug_auth::validate_new_user(&name, req.email.trim(), &req.password)
        .map_err(|e| UsersError::Api(e.into()))?;
    let display_name = req
        .display_name
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| name.clone());
    if display_name.len() > 200 || display_name.chars().any(char::is_control) {
        return Err(UsersError::Api(
            InvalidInput::new(
                "display_name",
                "the display name must be at most 200 printable characters",
            )
            .into(),
        ));
    }
    let password = req.password;
    let hash = tokio::task::spawn_blocking(move || pug_auth::hash_password(&password))
        .await
        .map_err(|e| UsersError::Api(ApiError::Internal(e.to_string())))?;
    state
        .store
        .create_user(&name, req.email.trim(), &display_name, &hash)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(find_user(&state, &name).await?)))
}

/// Lists users and their memberships.
#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, body = Vec<UserInfo>)))]
pub(crate) async fn list_users(
    State(state): State<ApiState>,
) -> Result<Json<Vec<UserInfo>>, UsersError> {
    Ok(Json(
        state
            .store
            .users()
            .await
            .map_err(store_error)?
            .into_iter()
            .map(info)
            .collect(),
    ))
}

/// Deletes a user, their memberships and sessions.
#[utoipa::path(delete, path = "/api/v1/users/{name}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_user(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, UsersError> {
    state.store.delete_user(&name).await.map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a user a role in a tenant (or changes it).
#[utoipa::path(put, path = "/api/v1/users/{name}/tenants/{tenant}", request_body = Grant,
    responses((status = 200, body = UserInfo), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn grant(
    State(state): State<ApiState>,
    Path((name, tenant)): Path<(String, String)>,
    body: Result<Json<Grant>, JsonRejection>,
) -> Result<Json<UserInfo>, UsersError> {
    let Json(req) = body?;
    let tenant = tenant_id(&tenant)?;
    let role = GrafanaRole::parse(&req.role).ok_or_else(|| {
        UsersError::Api(
            InvalidInput::new(
                "role",
                format!("role {:?} is not Viewer, Editor or Admin", req.role),
            )
            .into(),
        )
    })?;
    state
        .store
        .grant(&name, &tenant, role.as_str())
        .await
        .map_err(store_error)?;
    Ok(Json(find_user(&state, &name).await?))
}

/// Removes a user's membership of a tenant.
#[utoipa::path(delete, path = "/api/v1/users/{name}/tenants/{tenant}",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke(
    State(state): State<ApiState>,
    Path((name, tenant)): Path<(String, String)>,
) -> Result<StatusCode, UsersError> {
    let tenant = tenant_id(&tenant)?;
    if state
        .store
        .revoke(&name, &tenant)
        .await
        .map_err(store_error)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(UsersError::NotFound(format!(
            "user {name} is not a member of tenant {tenant}"
        )))
    }
}

/// Creates an embed key (the key is in this answer only).
#[utoipa::path(post, path = "/api/v1/embed-keys", request_body = NewEmbedKey,
    responses((status = 201, body = EmbedKey), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create_embed_key(
    State(state): State<ApiState>,
    body: Result<Json<NewEmbedKey>, JsonRejection>,
) -> Result<impl IntoResponse, UsersError> {
    let Json(req) = body?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(UsersError::Api(
            InvalidInput::new("name", "give the key a name of 1 to 100 characters").into(),
        ));
    }
    let tenant = req.tenant.as_deref().map(tenant_id).transpose()?;
    let algorithm = match req
        .algorithm
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("hs256") => embed::HS256,
        Some("eddsa") | Some("ed25519") => embed::EDDSA,
        Some(other) => {
            return Err(UsersError::Api(
                InvalidInput::new(
                    "algorithm",
                    format!("{other:?} is not an embed key algorithm; use HS256 or EdDSA"),
                )
                .into(),
            ))
        }
    };
    if algorithm == embed::HS256 {
        if req.public_key.is_some() {
            return Err(UsersError::Api(
                InvalidInput::new(
                    "public_key",
                    "a public key is for algorithm EdDSA; HS256 keys are made by pug",
                )
                .into(),
            ));
        }
        let (info, key) = state
            .store
            .create_embed_key(name, tenant.as_ref())
            .await
            .map_err(store_error)?;
        let mut out = EmbedKey::from(info);
        out.key = Some(key.expose_secret().to_owned());
        return Ok((StatusCode::CREATED, Json(out)));
    }
    let (public, private) = match &req.public_key {
        Some(pem) => {
            embed::parse_public_key(pem).map_err(|e| {
                UsersError::Api(InvalidInput::new("public_key", e.to_string()).into())
            })?;
            (pem.trim().to_owned() + "\n", None)
        }
        None => {
            let (private, public) = embed::generate_ed25519();
            (public, Some(private.expose_secret().to_owned()))
        }
    };
    let info = state
        .store
        .create_embed_key_eddsa(name, tenant.as_ref(), &public)
        .await
        .map_err(store_error)?;
    let mut out = EmbedKey::from(info);
    out.public_key = Some(public);
    out.private_key = private;
    Ok((StatusCode::CREATED, Json(out)))
}

impl From<pug_store::EmbedKeyInfo> for EmbedKey {
    fn from(k: pug_store::EmbedKeyInfo) -> Self {
        EmbedKey {
            id: k.id,
            name: k.name,
            tenant: k.tenant,
            created_at_ms: k.created_at_ms,
            algorithm: k.algorithm,
            key: None,
            public_key: None,
            private_key: None,
        }
    }
}

/// Lists embed keys (without the keys).
#[utoipa::path(get, path = "/api/v1/embed-keys", responses((status = 200, body = Vec<EmbedKey>)))]
pub(crate) async fn list_embed_keys(
    State(state): State<ApiState>,
) -> Result<Json<Vec<EmbedKey>>, UsersError> {
    let keys = state.store.embed_keys().await.map_err(store_error)?;
    Ok(Json(
        keys.into_iter()
            .map(|(k, material)| {
                // An EdDSA key's material is its public key: no secret, so it is listed.
                let public =
                    (k.algorithm == embed::EDDSA).then(|| material.expose_secret().to_owned());
                let mut out = EmbedKey::from(k);
                out.public_key = public;
                out
            })
            .collect(),
    ))
}

/// Deletes an embed key: tokens signed with it stop working, and the sessions they started
/// end (within the gateway's key refresh, a second).
#[utoipa::path(delete, path = "/api/v1/embed-keys/{id}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_embed_key(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, UsersError> {
    if state
        .store
        .delete_embed_key(&id)
        .await
        .map_err(store_error)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(UsersError::NotFound(format!(
            "embed key {id} does not exist"
        )))
    }
}
