//! `PUT/DELETE /api/numbers/{number}` and `GET /api/numbers?telnum=`: which dedicated number
//! belongs to which user. The store is the record of them; the b2bua's
//! [`NumberTable`](b2bua::NumberTable) is the copy the ownership checks read. A change is
//! committed to the store first, then made in memory, so that a failed write changes nothing.

use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};
use store::NumberAssignment;

use crate::body::ApiBody;
use crate::error::ApiError;
use crate::router::{check_number, json_response, string_field};
use crate::state::ApiState;

/// The body of `GET /api/numbers`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NumberList {
    pub numbers: Vec<NumberAssignment>,
}

/// `PUT /api/numbers/{number}` `{"telnum"}`.
pub(crate) async fn assign(
    state: &ApiState,
    number: &str,
    body: Map<String, Value>,
) -> Result<Response<ApiBody>, ApiError> {
    let telnum = string_field(&body, "telnum")?;
    check_number(state, "telnum", telnum)?;
    let assignment = NumberAssignment {
        number: store::normalize_number(number).to_owned(),
        telnum: store::normalize_number(telnum).to_owned(),
    };
    let store = state.store()?.clone();
    let (n, t) = (assignment.number.clone(), assignment.telnum.clone());
    crate::blocking(move || store.put_number(&n, &t)).await?;
    state
        .control
        .numbers()
        .assign(&assignment.number, &assignment.telnum);
    tracing::info!(number = %assignment.number, telnum = %assignment.telnum, "number assigned");
    Ok(json_response(StatusCode::OK, &assignment))
}

/// `DELETE /api/numbers/{number}`: `404 unknown_number` if it was not assigned.
pub(crate) async fn unassign(
    state: &ApiState,
    number: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let number = store::normalize_number(number).to_owned();
    let owner = state.control.numbers().owner(&number);
    let store = state.store()?.clone();
    let n = number.clone();
    let deleted = crate::blocking(move || store.delete_number(&n)).await?;
    state.control.numbers().remove(&number);
    if !deleted {
        return Err(ApiError::UnknownNumber);
    }
    tracing::info!(%number, "number unassigned");
    let assignment = NumberAssignment {
        number,
        telnum: owner.unwrap_or_default(),
    };
    Ok(json_response(StatusCode::OK, &assignment))
}

/// `GET /api/numbers?telnum=`: the assignments of `telnum`, or all of them.
pub(crate) async fn list(
    state: &ApiState,
    query: Option<&str>,
) -> Result<Response<ApiBody>, ApiError> {
    let mut telnum = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "telnum" {
            let value =
                crate::router::query_decode(raw).ok_or(ApiError::InvalidParameter("telnum"))?;
            check_number(state, "telnum", &value)
                .map_err(|_| ApiError::InvalidParameter("telnum"))?;
            telnum = Some(value);
        }
    }
    let store = state.store()?.clone();
    let numbers = crate::blocking(move || store.numbers(telnum.as_deref())).await?;
    Ok(json_response(StatusCode::OK, &NumberList { numbers }))
}
