//! `/_emulator/*`: inspection and run-time control. (Being written.)

use std::sync::Arc;

use axum::Router;

use super::ApiState;

/// Routes under `/_emulator/`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
}
