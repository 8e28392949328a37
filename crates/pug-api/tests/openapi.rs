//! The OpenAPI document as a snapshot: every change to the API's paths, parameters and types
//! shows in `tests/snapshots/openapi__openapi.snap`, so a review of that file is a review of
//! what changes for the API's users (and for the CLI, which is built on the same types).

use pug_api::ApiDoc;
use utoipa::OpenApi;

#[test]
fn the_openapi_document_is_what_was_reviewed() {
    let doc = ApiDoc::openapi();
    insta::with_settings!({ sort_maps => true, omit_expression => true }, {
        insta::assert_yaml_snapshot!("openapi", doc);
    });
}
