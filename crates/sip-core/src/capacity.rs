//! Giving memory back after a burst.
//!
//! `HashMap` and `BinaryHeap` grow by doubling and never shrink on their own: after a burst of
//! calls, the tables sized for the peak stay allocated for the life of the process, and at
//! steady state that shows up as memory per active call. The tables that follow calls shrink
//! when they fall to a quarter of their capacity, to twice their length: the hysteresis keeps
//! a table that hovers around one size from being resized back and forth, and the check is two
//! loads, so it runs on every removal.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Below this capacity a table is never shrunk: small tables cost little and churn most.
pub const MIN_SHRINK_CAPACITY: usize = 256;

/// Should a table of `len` entries and `capacity` slots be shrunk (to `2 * len`)?
pub fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity > MIN_SHRINK_CAPACITY && len.saturating_mul(4) < capacity
}

/// Shrinks `map` when it is sparse (see the module documentation).
pub fn shrink_map<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if is_sparse(map.len(), map.capacity()) {
        map.shrink_to(map.len().saturating_mul(2));
    }
}

/// Shrinks `heap` when it is sparse (see the module documentation).
pub fn shrink_heap<T: Ord>(heap: &mut BinaryHeap<T>) {
    if is_sparse(heap.len(), heap.capacity()) {
        heap.shrink_to(heap.len().saturating_mul(2));
    }
}

/// Shrinks `deque` when it is sparse (see the module documentation).
pub fn shrink_deque<T>(deque: &mut VecDeque<T>) {
    if is_sparse(deque.len(), deque.capacity()) {
        deque.shrink_to(deque.len().saturating_mul(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_only_sparse_large_tables() {
        assert!(!is_sparse(5_000, 14_336), "half full: kept");
        assert!(!is_sparse(3_584, 14_336), "a quarter full: kept");
        assert!(is_sparse(3_583, 14_336));
        assert!(!is_sparse(0, MIN_SHRINK_CAPACITY), "small: kept");

        let mut map: HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let peak = map.capacity();
        map.retain(|k, _| *k < 1_000);
        shrink_map(&mut map);
        assert!(map.capacity() <= peak / 4, "a tenth full: shrunk");
        assert!(map.capacity() >= 2_000, "to twice its length");
        assert_eq!(map.len(), 1_000);

        let mut small: HashMap<u32, u32> = (0..200).map(|i| (i, i)).collect();
        small.clear();
        let capacity = small.capacity();
        shrink_map(&mut small);
        assert_eq!(small.capacity(), capacity, "small tables are left alone");

        let mut heap: BinaryHeap<u32> = (0..10_000).collect();
        let peak = heap.capacity();
        while heap.len() > 100 {
            heap.pop();
        }
        shrink_heap(&mut heap);
        assert!(heap.capacity() < peak / 4 && heap.len() == 100);
        assert_eq!(heap.peek(), Some(&99));
    }
}
