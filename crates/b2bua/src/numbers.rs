//! [`NumberTable`]: which dedicated number belongs to which user, for the ownership checks of
//! `intent.require_ownership` (SPEC.md). The store keeps the assignments across restarts; this
//! table is their copy in memory, loaded at start and changed with every `PUT`/`DELETE
//! /api/numbers/{number}`, so that the checks on the hot path (each makecall, each INVITE)
//! never wait for a disk.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::intent::normalize_number;

/// Dedicated number → the telnum it is assigned to, both without a leading `+`.
#[derive(Debug, Default)]
pub struct NumberTable {
    owners: RwLock<HashMap<String, String, foldhash::fast::RandomState>>,
}

impl NumberTable {
    /// Replaces every assignment with `assignments` (number, telnum) (at start, from the store).
    pub fn load<I, N, T>(&self, assignments: I)
    where
        I: IntoIterator<Item = (N, T)>,
        N: AsRef<str>,
        T: AsRef<str>,
    {
        let mut owners = self.owners.write();
        owners.clear();
        for (number, telnum) in assignments {
            owners.insert(
                normalize_number(number.as_ref()).to_owned(),
                normalize_number(telnum.as_ref()).to_owned(),
            );
        }
    }

    /// Assigns `number` to `telnum`, replacing any previous owner.
    pub fn assign(&self, number: &str, telnum: &str) {
        self.owners.write().insert(
            normalize_number(number).to_owned(),
            normalize_number(telnum).to_owned(),
        );
    }

    /// Removes the assignment of `number`; `false` if it had none.
    pub fn remove(&self, number: &str) -> bool {
        self.owners
            .write()
            .remove(normalize_number(number))
            .is_some()
    }

    /// The telnum `number` is assigned to.
    pub fn owner(&self, number: &str) -> Option<String> {
        self.owners.read().get(normalize_number(number)).cloned()
    }

    /// Is `number` assigned to `telnum`?
    pub fn owns(&self, telnum: &str, number: &str) -> bool {
        self.owners
            .read()
            .get(normalize_number(number))
            .is_some_and(|owner| owner == normalize_number(telnum))
    }

    /// How many numbers are assigned.
    pub fn len(&self) -> usize {
        self.owners.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_compare_without_plus_and_replace_each_other() {
        let table = NumberTable::default();
        table.load([("+2001", "1001"), ("2002", "+1002")]);
        assert!(table.owns("1001", "2001"));
        assert!(table.owns("+1001", "+2001"));
        assert!(table.owns("1002", "2002"));
        assert!(!table.owns("1002", "2001"));
        table.assign("2001", "1002");
        assert!(table.owns("1002", "2001") && !table.owns("1001", "2001"));
        assert_eq!(table.owner("+2001").as_deref(), Some("1002"));
        assert!(table.remove("+2001"));
        assert!(!table.remove("2001"));
        assert_eq!(table.len(), 1);
        table.load(Vec::<(String, String)>::new());
        assert!(table.is_empty());
    }
}
