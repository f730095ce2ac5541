//! The web console at `/ui`: one HTML page, two scripts (`app.js`: sign-in,
//! namespaces, items, edit, history; `release.js`: gray release and the
//! rollout view) and one style sheet
//! (`configd/ui/`, plain HTML, CSS and vanilla JS), embedded in the binary
//! with `include_str!`, so there is no build step, no CDN and nothing to
//! deploy beside configd. The page talks to the same JSON API as curl with
//! the token the user signs in with; every answer carries a strict
//! Content-Security-Policy (scripts and styles from this origin only, no
//! inline script, no framing), so even a value that slipped into the DOM as
//! HTML could not run. docs/console.md.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The policy of every `/ui` answer: nothing but this origin's script,
/// style and API; no inline script or style, no plugins, no framing, no
/// form posts elsewhere, no `<base>` tricks.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const RELEASE_JS: &str = include_str!("../../ui/release.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// An embedded file with the console's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response();
    secure(&mut resp);
    resp
}

/// The headers every `/ui` answer carries.
fn secure(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new binary brings new assets: never serve a stale script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// `GET /ui`: the console's page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{file}`: `app.js`, `release.js` or `app.css`; anything else is
/// a 404.
pub async fn file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "release.js" => asset("text/javascript; charset=utf-8", RELEASE_JS),
        "app.css" => asset("text/css; charset=utf-8", APP_CSS),
        _ => {
            let mut resp = (StatusCode::NOT_FOUND, "no such console file\n").into_response();
            secure(&mut resp);
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads only the embedded files, and nothing inline.
    #[test]
    fn the_page_has_no_inline_script_or_style_and_loads_only_local_files() {
        assert!(INDEX.contains(r#"<script src="/ui/app.js""#));
        assert!(INDEX.contains(r#"<script src="/ui/release.js""#));
        assert!(INDEX.contains(r#"href="/ui/app.css""#));
        for bad in [
            "<script>",
            " style=",
            " onclick=",
            " onload=",
            "http://",
            "https://",
        ] {
            assert!(!INDEX.contains(bad), "index.html contains {bad:?}");
        }
        for bad in [
            ".innerHTML",
            ".outerHTML",
            "insertAdjacentHTML",
            "eval(",
            "document.write",
        ] {
            for (name, js) in [("app.js", APP_JS), ("release.js", RELEASE_JS)] {
                assert!(!js.contains(bad), "{name} uses {bad:?}");
            }
        }
    }
}
