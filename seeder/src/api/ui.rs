//! The publisher's console: one HTML page, its script and its style sheet, compiled into the
//! binary (no build step, nothing fetched from elsewhere). The page is a shell: everything
//! it shows comes from the API, with the bearer token the user pastes (kept in the tab's
//! `sessionStorage`), so serving it needs no token.
//!
//! The headers every response gets ([`security_headers`]) keep the page's script the only
//! script: `script-src 'self'` without `'unsafe-inline'`, so markup that the API echoes
//! (device ids, site names, error texts) can never run even if it slipped past the script's
//! escaping (it sets text, never HTML).

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The policy: this origin's script, style, images and API only; no plugins, frames, forms
/// or base changes.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");
const ICON_SVG: &str = include_str!("ui/icon.svg");

fn page(content_type: &'static str, body: &'static str) -> Response {
    // `no-cache`: revalidate each load, so a new seeder binary's console is used at once.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// `GET /`: the console.
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/{file}`: the console's script, style sheet and icon.
pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => page("text/javascript; charset=utf-8", APP_JS),
        "app.css" => page("text/css; charset=utf-8", APP_CSS),
        "icon.svg" => page("image/svg+xml", ICON_SVG),
        _ => ApiError::not_found("no such console file").into_response(),
    }
}

/// Adds the Content-Security-Policy and related headers to every response.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
