//! Streaming every record of a filter, page by page.

use std::vec;

use crate::{CallFilter, CallRow, Store, StoreError, MAX_LIMIT};

/// Rows fetched per page by an [`Export`] unless told otherwise.
pub const DEFAULT_EXPORT_PAGE: usize = 500;

/// Every record matching a filter, newest first, as an iterator that holds one page at a time
/// (`GET /api/calls/export`).
///
/// It walks the listing's keyset pages ([`Store::list_calls`]), so it works over any backend,
/// holds at most `page_size` rows, and keeps no read transaction open between pages (a long
/// read would stop SQLite's WAL from being checkpointed while a large export is streamed to
/// a slow client). Records created while the export runs appear if they sort after its
/// position (older than the last row sent); newer ones do not.
///
/// After an error the iterator ends: the HTTP response is cut short, which a streaming
/// client sees as a truncated body.
pub struct Export<'a> {
    store: &'a dyn Store,
    filter: CallFilter,
    page_size: usize,
    cursor: Option<String>,
    rows: vec::IntoIter<CallRow>,
    done: bool,
}

impl<'a> Export<'a> {
    /// An export of `filter` over `store`, in pages of [`DEFAULT_EXPORT_PAGE`] rows.
    pub fn new(store: &'a dyn Store, filter: CallFilter) -> Export<'a> {
        Export {
            store,
            filter,
            page_size: DEFAULT_EXPORT_PAGE,
            cursor: None,
            rows: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Fetches `rows` per page (clamped to `1..=`[`MAX_LIMIT`]).
    pub fn page_size(mut self, rows: usize) -> Export<'a> {
        self.page_size = rows.clamp(1, MAX_LIMIT);
        self
    }
}

impl Iterator for Export<'_> {
    type Item = Result<CallRow, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.rows.next() {
                return Some(Ok(row));
            }
            if self.done {
                return None;
            }
            let page = self
                .store
                .list_calls(&self.filter, self.page_size, self.cursor.as_deref());
            match page {
                Ok(page) => {
                    self.cursor = page.next_cursor;
                    self.done = self.cursor.is_none();
                    self.rows = page.calls.into_iter();
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }
}
