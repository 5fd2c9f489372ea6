//! Merging an update into a locked shard: the version check (last writer wins, origin
//! name as tie-break), touches, tombstones, and the shard's node and origin names.

use super::*;

impl Shard {
    /// The ids of an origin and a node name; when the shard's names are full, those
    /// no entry uses any more are dropped first. `None`: still full (thousands of
    /// distinct names, which only a misbehaving peer sends): the update is not stored.
    pub(super) fn ids(&mut self, origin: &str, node: Option<&str>) -> Option<(u16, Option<u16>)> {
        let o = self.names.find(origin);
        let n = node.map(|n| self.names.find(n));
        if let (Some(o), None | Some(Some(_))) = (o, n) {
            return Some((o, n.flatten()));
        }
        let missing = usize::from(o.is_none()) + usize::from(matches!(n, Some(None)));
        if self.names.len() + missing > store::MAX_NAMES {
            self.drop_unused_names();
        }
        let o = self.names.add(origin)?;
        let n = match node {
            Some(n) => Some(self.names.add(n)?),
            None => None,
        };
        Some((o, n))
    }

    fn drop_unused_names(&mut self) {
        let mut used = vec![false; self.names.len()];
        let mut mark = |i: u16| {
            if let Some(u) = used.get_mut(usize::from(i)) {
                *u = true;
            }
        };
        for (_, e) in self.live.iter_stored() {
            mark(e.node);
            mark(e.origin);
        }
        for (_, t) in self.dead.iter_stored() {
            mark(t.origin);
        }
        let map = self.names.retain(&used);
        let new = |i: u16| map.get(usize::from(i)).copied().unwrap_or(u16::MAX);
        self.live.for_each_mut(|e| {
            e.node = new(e.node);
            e.origin = new(e.origin);
        });
        self.dead.for_each_mut(|t| t.origin = new(t.origin));
    }
}

/// Merge `u` (stored under `key`, of hash `h`) into its locked shard. `wall`: now on
/// the wall clock (stamps); `now`: now on the table's clock.
pub(super) fn merge_into(
    g: &mut Shard,
    h: u64,
    key: &str,
    u: &UpdateRef<'_>,
    wall: u64,
    now: i64,
    expire: Duration,
) -> bool {
    if u.stamp > wall.saturating_add(MAX_FUTURE_MS) {
        return false;
    }
    // One probe of each map for the version; the entry is then changed in place.
    let live = g.live.find(h, key);
    let dead = match live {
        Some(_) => None,
        None => g.dead.find(h, key),
    };
    let known = match (live, dead) {
        (Some(i), _) => Some((g.live.at(i).stamp, g.live.at(i).origin)),
        (None, Some(i)) => Some((g.dead.at(i).stamp, g.dead.at(i).origin)),
        (None, None) => None,
    };
    if let Some((stamp, origin)) = known {
        match (stamp, &**g.names.get(origin)).cmp(&(u.stamp, u.origin)) {
            std::cmp::Ordering::Greater => return false,
            std::cmp::Ordering::Equal => {
                if let Some(i) = live {
                    let e = g.live.at_mut(i);
                    e.used = e.used.max(ago(now, u.idle_ms));
                }
                return false;
            }
            std::cmp::Ordering::Less => {}
        }
    }
    if Duration::from_millis(u.idle_ms) > expire {
        return false;
    }
    // Names are looked up (and maybe reclaimed) before any slot changes.
    let Some((origin, node)) = g.ids(u.origin, u.node) else {
        return false;
    };
    match node {
        Some(node) => {
            if dead.is_some() {
                g.dead.pop(h, key);
            }
            let e = Live {
                stamp: u.stamp,
                used: ago(now, u.idle_ms),
                announced: tenths(now),
                node,
                origin,
            };
            match live {
                Some(i) => g.live.replace(i, e),
                None => g.live.insert_new(h, key, e),
            }
            true
        }
        None => {
            if live.is_some() {
                g.live.pop(h, key);
            }
            let t = Tomb {
                stamp: u.stamp,
                origin,
                at: ago(now, u.idle_ms),
            };
            match dead {
                Some(i) => g.dead.replace(i, t),
                None => g.dead.insert_new(h, key, t),
            }
            live.is_some()
        }
    }
}
