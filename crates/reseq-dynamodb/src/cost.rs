//! Write cost, counted by the store itself: requests by kind and the capacity DynamoDB
//! reports as consumed (`ReturnConsumedCapacity::TOTAL` on every call).

use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodb::types::ConsumedCapacity;

/// What a store has sent since it was made (or since [`crate::DynamoStore::reset_cost`]).
///
/// Requests are counted as the store sends them, whatever their outcome (a conditional
/// write that fails its condition is a request too); a retry the SDK makes of one request
/// is not counted again. Capacity units are those DynamoDB reports in successful
/// responses: a write refused by its condition (`ConditionalCheckFailed`, a cancelled
/// transaction) consumes write capacity on AWS too, but DynamoDB does not report it to the
/// caller, so `write_units` leaves it out.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// `GetItem` requests (reads).
    pub get_item: u64,
    /// `Query` requests, one per page (reads).
    pub query_pages: u64,
    /// `PutItem` requests (writes).
    pub put_item: u64,
    /// `UpdateItem` requests (writes: a waiting item's TTL pushed out, see `keep_staged`).
    pub update_item: u64,
    /// `DeleteItem` requests (writes).
    pub delete_item: u64,
    /// `TransactWriteItems` requests (writes).
    pub transact_write_items: u64,
    /// `BatchWriteItem` requests (writes), one per batch of at most 25 deletes.
    pub batch_write_item: u64,
    /// Read capacity units consumed by the reads above.
    pub read_units: f64,
    /// Write capacity units consumed by the writes above.
    pub write_units: f64,
}

impl Cost {
    /// Read requests: `GetItem` and `Query` pages.
    pub fn read_requests(&self) -> u64 {
        self.get_item + self.query_pages
    }

    /// Write requests of every kind.
    pub fn write_requests(&self) -> u64 {
        self.put_item + self.update_item + self.delete_item + self.transact_write_items + self.batch_write_item
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Request {
    GetItem,
    QueryPage,
    PutItem,
    UpdateItem,
    DeleteItem,
    TransactWriteItems,
    BatchWriteItem,
}

impl Request {
    fn is_read(self) -> bool {
        matches!(self, Request::GetItem | Request::QueryPage)
    }
}

/// An `f64` in an atomic, as its bits.
#[derive(Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn add(&self, v: f64) {
        // `fetch_update` retries on a race; the closure never refuses.
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + v).to_bits())
        });
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn reset(&self) {
        self.0.store(0f64.to_bits(), Ordering::Relaxed);
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    get_item: AtomicU64,
    query_pages: AtomicU64,
    put_item: AtomicU64,
    update_item: AtomicU64,
    delete_item: AtomicU64,
    transact_write_items: AtomicU64,
    batch_write_item: AtomicU64,
    read_units: AtomicF64,
    write_units: AtomicF64,
}

impl Counters {
    /// Counts a request as it is sent.
    pub(crate) fn sent(&self, request: Request) {
        let counter = match request {
            Request::GetItem => &self.get_item,
            Request::QueryPage => &self.query_pages,
            Request::PutItem => &self.put_item,
            Request::UpdateItem => &self.update_item,
            Request::DeleteItem => &self.delete_item,
            Request::TransactWriteItems => &self.transact_write_items,
            Request::BatchWriteItem => &self.batch_write_item,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the capacity a response reports.
    pub(crate) fn consumed<'a>(&self, request: Request, capacity: impl IntoIterator<Item = &'a ConsumedCapacity>) {
        let units: f64 = capacity.into_iter().filter_map(|c| c.capacity_units()).sum();
        if units != 0.0 {
            if request.is_read() {
                self.read_units.add(units);
            } else {
                self.write_units.add(units);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Cost {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Cost {
            get_item: get(&self.get_item),
            query_pages: get(&self.query_pages),
            put_item: get(&self.put_item),
            update_item: get(&self.update_item),
            delete_item: get(&self.delete_item),
            transact_write_items: get(&self.transact_write_items),
            batch_write_item: get(&self.batch_write_item),
            read_units: self.read_units.get(),
            write_units: self.write_units.get(),
        }
    }

    pub(crate) fn reset(&self) {
        for c in [
            &self.get_item,
            &self.query_pages,
            &self.put_item,
            &self.update_item,
            &self.delete_item,
            &self.transact_write_items,
            &self.batch_write_item,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.read_units.reset();
        self.write_units.reset();
    }
}
