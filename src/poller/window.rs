//! Listing windows: which `[start, end)` ranges a poll lists, and how one window is
//! drained page by page.
//!
//! Rules (spec §2.4, §7.5, §7.6), all on the service's time (our clock plus any skew
//! detected from its `Date` header):
//! - nothing starts before `now − 7 days + retention margin` (the *floor*): Microsoft
//!   refuses older starts (AF20030), and was seen to refuse starts older than about
//!   7 days + 1 hour;
//! - a window is at most `max_window` long (validated below 24 hours), and
//!   `start < end`;
//! - a window is drained by following `NextPageUri` verbatim to the last page; an
//!   AF20031 (invalid nextPage) restarts the window from its first page, at most
//!   [`MAX_PAGE_RESTARTS`] times.

use chrono::{DateTime, Duration, Utc};

use crate::api::types::ContentItem;
use crate::api::{ApiClient, ApiError, ErrorKind};
use crate::config::ContentType;

/// How many times one window is restarted from its first page after AF20031.
pub const MAX_PAGE_RESTARTS: usize = 2;

/// The 7 days the API lists back.
pub fn retention() -> Duration {
    Duration::days(7)
}

/// A listing window `[start, end)` on `contentCreated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Inclusive start.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
}

impl std::fmt::Display for Window {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "[{}, {})",
            self.start.to_rfc3339(),
            self.end.to_rfc3339()
        )
    }
}

/// The earliest `startTime` the API serves at `now`, keeping `margin` from its 7-day
/// limit.
pub fn floor(now: DateTime<Utc>, margin: Duration) -> DateTime<Utc> {
    now - retention() + margin
}

/// `[start, end)` cut into consecutive windows of at most `max_window`, in order; empty
/// when `start >= end`.
pub fn split(start: DateTime<Utc>, end: DateTime<Utc>, max_window: Duration) -> Vec<Window> {
    let mut windows = Vec::new();
    let mut cursor = start;
    while cursor < end {
        let window_end = (cursor + max_window).min(end);
        windows.push(Window {
            start: cursor,
            end: window_end,
        });
        cursor = window_end;
    }
    windows
}

/// What one regular poll lists, computed from the stored cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListingPlan {
    /// The interval that can no longer be listed (`[cursor, floor)`), when the cursor is
    /// older than the floor.
    pub gap: Option<Window>,
    /// Where listing starts: `max(cursor − overlap, floor)`, or `max(now − lookback,
    /// floor)` without a cursor.
    pub start: DateTime<Utc>,
    /// Where listing ends: `now − lag`.
    pub end: DateTime<Utc>,
}

/// The durations a plan depends on.
#[derive(Clone, Copy, Debug)]
pub struct PlanRules {
    /// Re-listed before the cursor.
    pub overlap: Duration,
    /// Kept from the 7-day limit.
    pub margin: Duration,
    /// Kept before now.
    pub lag: Duration,
    /// First-run start, before now.
    pub initial_lookback: Duration,
}

/// The plan of a regular poll at `now` (service time) for `cursor`.
pub fn plan(cursor: Option<DateTime<Utc>>, now: DateTime<Utc>, rules: &PlanRules) -> ListingPlan {
    let floor = floor(now, rules.margin);
    let end = now - rules.lag;
    let (start, gap) = match cursor {
        Some(cursor) => {
            let gap = (cursor < floor).then_some(Window {
                start: cursor,
                end: floor,
            });
            ((cursor - rules.overlap).max(floor), gap)
        }
        None => ((now - rules.initial_lookback).max(floor), None),
    };
    ListingPlan { gap, start, end }
}

/// The pages of one window, in order: the first page, then every `NextPageUri` followed
/// verbatim to the last page. AF20031 on a followed page restarts the window from its
/// first page (items already returned are returned again; callers deduplicate), at most
/// [`MAX_PAGE_RESTARTS`] times.
pub struct WindowPages<'a> {
    client: &'a ApiClient,
    content_type: ContentType,
    window: Window,
    next: NextPage,
    restarts: usize,
    requests: u64,
}

enum NextPage {
    First,
    Follow(reqwest::Url),
    Done,
}

impl<'a> WindowPages<'a> {
    /// The pages of `window`; nothing is requested before [`WindowPages::next_page`].
    pub fn new(client: &'a ApiClient, content_type: ContentType, window: Window) -> Self {
        Self {
            client,
            content_type,
            window,
            next: NextPage::First,
            restarts: 0,
            requests: 0,
        }
    }

    /// The items of the next page; `None` after the last page.
    pub async fn next_page(&mut self) -> Result<Option<Vec<ContentItem>>, ApiError> {
        loop {
            let (result, followed) = match std::mem::replace(&mut self.next, NextPage::Done) {
                NextPage::Done => return Ok(None),
                NextPage::First => {
                    let (start, end) = (self.window.start, self.window.end);
                    let page = self
                        .client
                        .list_content(self.content_type.as_str(), start, end)
                        .await;
                    (page, false)
                }
                NextPage::Follow(url) => (self.client.content_page(url).await, true),
            };
            self.requests += 1;
            match result {
                Ok(page) => {
                    self.next = page.next_page.map_or(NextPage::Done, NextPage::Follow);
                    return Ok(Some(page.items));
                }
                Err(error)
                    if followed
                        && error.kind() == Some(ErrorKind::InvalidNextPage)
                        && self.restarts < MAX_PAGE_RESTARTS =>
                {
                    self.restarts += 1;
                    self.next = NextPage::First;
                    tracing::warn!(
                        tenant = self.client.tenant_id(), content_type = %self.content_type,
                        window = %self.window, %error,
                        "the service refused its own nextPage (AF20031); listing the window again from its first page"
                    );
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Listing requests made so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn rules() -> PlanRules {
        PlanRules {
            overlap: Duration::hours(1),
            margin: Duration::hours(1),
            lag: Duration::minutes(1),
            initial_lookback: Duration::hours(24),
        }
    }

    #[test]
    fn windows_tile_the_range_and_never_exceed_the_cap() {
        let start = utc("2026-01-01T00:00:00Z");
        let end = start + Duration::hours(50);
        let windows = split(start, end, Duration::hours(23));
        assert_eq!(windows.len(), 3);
        assert_eq!(windows[0].start, start);
        assert_eq!(windows[2].end, end);
        for pair in windows.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert!(
            windows
                .iter()
                .all(|w| w.end - w.start <= Duration::hours(23) && w.start < w.end)
        );
        assert!(split(end, start, Duration::hours(23)).is_empty());
    }

    #[test]
    fn first_run_starts_at_the_lookback_and_a_cursor_is_overlapped() {
        let now = utc("2026-01-10T12:00:00Z");
        let first = plan(None, now, &rules());
        assert_eq!(first.start, now - Duration::hours(24));
        assert_eq!(first.end, now - Duration::minutes(1));
        assert_eq!(first.gap, None);
        let cursor = now - Duration::minutes(5);
        let next = plan(Some(cursor), now, &rules());
        assert_eq!(next.start, cursor - Duration::hours(1));
        assert_eq!(next.gap, None);
    }

    #[test]
    fn a_cursor_older_than_seven_days_clamps_to_the_floor_and_names_the_gap() {
        let now = utc("2026-01-10T12:00:00Z");
        let cursor = now - Duration::days(8);
        let planned = plan(Some(cursor), now, &rules());
        let floor = now - Duration::days(7) + Duration::hours(1);
        assert_eq!(planned.start, floor);
        assert_eq!(
            planned.gap,
            Some(Window {
                start: cursor,
                end: floor
            })
        );
        // Only the overlap reaches behind the floor: no gap.
        let recent = plan(Some(floor + Duration::minutes(30)), now, &rules());
        assert_eq!((recent.start, recent.gap), (floor, None));
        // A lookback of 7 days is clamped without a gap.
        let week = PlanRules {
            initial_lookback: Duration::days(7),
            ..rules()
        };
        assert_eq!(plan(None, now, &week).start, floor);
    }
}
