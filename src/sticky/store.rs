//! The storage of one sticky shard: a bounded map from key to a small fixed-size value,
//! in least-recently-used order, laid out for memory per entry (issue 30).
//!
//! Entries live in one `Vec` of slots (key, inline up to 30 bytes, its hash, two `u32`
//! links of the LRU list, value);
//! a `hashbrown::HashTable<u32>` indexes them by key (4 bytes and a control byte per
//! bucket). Freed slots are chained and reused, so the vector never holds more slots
//! than the most entries the shard ever held at once. Compared with an `LruCache<Arc<str>,
//! _>` (a heap node of two pointers and the value, a key `Arc` with two counters, a
//! table of two pointers per bucket), an entry costs its slot (72 bytes with the
//! sticky values), ~6 bytes of index, and a heap block only for a key over 30 bytes.

use hashbrown::HashTable;
use std::collections::HashMap;
use std::sync::Arc;

/// "No slot" in the LRU links.
const NIL: u32 = u32::MAX;
/// `prev` of a free slot.
const FREE: u32 = u32::MAX - 1;

/// Keys up to this many bytes are kept inside the slot (no heap block): client ids
/// are mostly shorter (UUIDs without dashes are 32, MAC-derived ids ~17).
pub const INLINE_KEY: usize = 30;

/// A stored key: inline up to [`INLINE_KEY`] bytes, else on the heap (32 bytes either
/// way, so a slot costs the same whatever the key).
#[derive(Debug)]
pub enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<str>),
}

impl Default for Key {
    fn default() -> Self {
        Key::Inline {
            len: 0,
            bytes: [0; INLINE_KEY],
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE_KEY {
            let mut bytes = [0; INLINE_KEY];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Key::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(s.into())
        }
    }
}

impl Key {
    /// The key's bytes (what lookups compare: no UTF-8 check).
    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(s) => s.as_bytes(),
        }
    }
}

impl std::ops::Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            // Copied from a `str` whole, so always UTF-8.
            Key::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Key::Heap(s) => s,
        }
    }
}

struct Slot<V> {
    /// Empty for a free slot (an empty key does not allocate).
    key: Key,
    /// The key's hash, kept so that growing the index does not hash every key again.
    hash: u64,
    prev: u32,
    next: u32,
    val: V,
}

/// A bounded LRU map from `str` keys to `V`, looked up with a hash the caller computes
/// (always with the same hasher; the sticky table computes each key's hash once).
pub struct Lru<V> {
    index: HashTable<u32>,
    slots: Vec<Slot<V>>,
    /// Head of the chain of free slots (linked through `next`).
    free: u32,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    len: usize,
    cap: usize,
}

impl<V: Copy> Lru<V> {
    /// An empty map bounded to `cap` entries (at least one) that grows with its contents.
    pub fn new(cap: usize) -> Self {
        Lru {
            index: HashTable::new(),
            slots: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            cap: cap.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The slot of `key`, if it is in the map.
    pub fn find(&self, hash: u64, key: &str) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let slots = &self.slots;
        self.index
            .find(hash, |&i| {
                let s = &slots[i as usize];
                s.hash == hash && s.key.bytes() == key.as_bytes()
            })
            .copied()
    }

    /// The value in slot `i` (from [`Lru::find`]).
    pub fn at(&self, i: u32) -> &V {
        &self.slots[i as usize].val
    }

    /// The value in slot `i` (from [`Lru::find`]) to change, in place.
    pub fn at_mut(&mut self, i: u32) -> &mut V {
        &mut self.slots[i as usize].val
    }

    /// Replace the value in slot `i` (from [`Lru::find`]); it becomes the most
    /// recently used.
    pub fn replace(&mut self, i: u32, val: V) {
        self.slots[i as usize].val = val;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.slots[o as usize].prev = i,
        }
        self.head = i;
    }

    /// The value of `key`, without changing its place in the LRU order.
    pub fn peek(&self, hash: u64, key: &str) -> Option<&V> {
        self.find(hash, key).map(|i| &self.slots[i as usize].val)
    }

    /// The value of `key` to change; it becomes the most recently used.
    pub fn get_mut(&mut self, hash: u64, key: &str) -> Option<&mut V> {
        let i = self.find(hash, key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(&mut self.slots[i as usize].val)
    }

    /// Insert or replace `key` as the most recently used entry, dropping the least
    /// recently used one when the map is full.
    pub fn put(&mut self, hash: u64, key: &str, val: V) {
        match self.find(hash, key) {
            Some(i) => self.replace(i, val),
            None => self.insert_new(hash, key, val),
        }
    }

    /// Insert `key`, known not to be in the map, as the most recently used entry.
    pub fn insert_new(&mut self, hash: u64, key: &str, val: V) {
        if self.len >= self.cap {
            self.pop_lru();
        }
        let i = match self.free {
            NIL => {
                // Slot indices are u32: a shard never holds 4 billion entries (the
                // capacity is checked far below that at config time).
                let i = u32::try_from(self.slots.len()).unwrap_or(NIL - 1);
                self.slots.push(Slot {
                    key: key.into(),
                    hash,
                    prev: NIL,
                    next: NIL,
                    val,
                });
                i
            }
            f => {
                let s = &mut self.slots[f as usize];
                self.free = s.next;
                s.key = key.into();
                s.hash = hash;
                s.val = val;
                f
            }
        };
        let Lru { index, slots, .. } = self;
        index.insert_unique(hash, i, |&j| slots[j as usize].hash);
        self.push_front(i);
        self.len += 1;
    }

    /// Free slot `i` (already out of the index).
    fn release(&mut self, i: u32) -> V {
        self.unlink(i);
        let s = &mut self.slots[i as usize];
        s.key = Key::default();
        s.next = self.free;
        s.prev = FREE;
        self.free = i;
        self.len -= 1;
        s.val
    }

    /// Remove `key`; returns its value.
    pub fn pop(&mut self, hash: u64, key: &str) -> Option<V> {
        if self.len == 0 {
            return None;
        }
        let slots = &self.slots;
        let entry = self
            .index
            .find_entry(hash, |&i| {
                let s = &slots[i as usize];
                s.hash == hash && s.key.bytes() == key.as_bytes()
            })
            .ok()?;
        let (i, _) = entry.remove();
        Some(self.release(i))
    }

    /// The least recently used entry.
    pub fn peek_lru(&self) -> Option<(&str, &V)> {
        match self.tail {
            NIL => None,
            t => {
                let s = &self.slots[t as usize];
                Some((&*s.key, &s.val))
            }
        }
    }

    /// Remove the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<V> {
        let t = self.tail;
        if t == NIL {
            return None;
        }
        let hash = self.slots[t as usize].hash;
        if let Ok(e) = self.index.find_entry(hash, |&i| i == t) {
            e.remove();
        }
        Some(self.release(t))
    }

    /// Change the bound, dropping least recently used entries down to it.
    pub fn resize(&mut self, cap: usize) {
        self.cap = cap.max(1);
        while self.len > self.cap {
            self.pop_lru();
        }
    }

    /// Change every value in place (in no particular order).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut V)) {
        let mut at = self.tail;
        while at != NIL {
            let s = &mut self.slots[at as usize];
            f(&mut s.val);
            at = s.prev;
        }
    }

    /// Every entry in storage order (about the order of insertion): a sequential walk
    /// of the slots, much faster on a large map than following the LRU links.
    pub fn iter_stored(&self) -> impl Iterator<Item = (&str, &V)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.prev != FREE)
            .map(|s| (&*s.key, &s.val))
    }

    /// Every entry, least recently used first.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> + '_ {
        let mut at = self.tail;
        std::iter::from_fn(move || match at {
            NIL => None,
            i => {
                let s = &self.slots[i as usize];
                at = s.prev;
                Some((&*s.key, &s.val))
            }
        })
    }
}

/// Most distinct node and origin names one shard keeps (ids are `u16`); when full, the
/// names no entry uses any more are dropped (`Shard::ids`).
pub const MAX_NAMES: usize = 4096;

/// A shard's node and origin names, stored once and referred to by a `u16` id.
#[derive(Default)]
pub struct Names {
    list: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u16>,
}

impl Names {
    pub fn find(&self, s: &str) -> Option<u16> {
        // A shard names a handful of nodes and gateways: comparing them is cheaper
        // than hashing (twice per merged entry).
        if self.list.len() <= 16 {
            return self
                .list
                .iter()
                .position(|n| **n == *s)
                .and_then(|i| u16::try_from(i).ok());
        }
        self.ids.get(s).copied()
    }

    /// The id of `s`, added if there is room.
    pub fn add(&mut self, s: &str) -> Option<u16> {
        if let Some(i) = self.find(s) {
            return Some(i);
        }
        if self.list.len() >= MAX_NAMES {
            return None;
        }
        let i = u16::try_from(self.list.len()).ok()?;
        let a: Arc<str> = Arc::from(s);
        self.list.push(a.clone());
        self.ids.insert(a, i);
        Some(i)
    }

    /// The name of id `i` (ids come from [`Names::add`] on the same shard).
    pub fn get(&self, i: u16) -> &Arc<str> {
        static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        self.list
            .get(usize::from(i))
            .unwrap_or_else(|| NONE.get_or_init(|| Arc::from("")))
    }

    /// Keep only the names `used` marks (indexed by id); returns the new id of each
    /// old id (`u16::MAX` for a dropped one).
    pub fn retain(&mut self, used: &[bool]) -> Vec<u16> {
        let old = std::mem::take(&mut self.list);
        self.ids.clear();
        let mut map = vec![u16::MAX; old.len()];
        for (i, name) in old.into_iter().enumerate() {
            if used.get(i).copied().unwrap_or(false) {
                let n = self.list.len() as u16;
                self.ids.insert(name.clone(), n);
                self.list.push(name);
                map[i] = n;
            }
        }
        map
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::hash::BuildHasher;

    fn lru(cap: usize) -> Lru<u32> {
        Lru::new(cap)
    }

    fn hash(k: &str) -> u64 {
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(k)
    }

    fn put(m: &mut Lru<u32>, k: &str, v: u32) {
        let h = hash(k);
        m.put(h, k, v);
    }

    fn get(m: &mut Lru<u32>, k: &str) -> Option<u32> {
        let h = hash(k);
        m.get_mut(h, k).copied()
    }

    fn keys(m: &Lru<u32>) -> Vec<String> {
        m.iter().map(|(k, _)| k.to_string()).collect()
    }

    #[test]
    fn keys_up_to_30_bytes_are_inline_and_longer_ones_on_the_heap() {
        assert_eq!(std::mem::size_of::<Key>(), 32);
        assert_eq!(std::mem::size_of::<Slot<[u64; 3]>>(), 72);
        for s in ["", "é", &"k".repeat(30), "ünïcødé-ünïcødé-ünï"] {
            assert!(matches!(Key::from(s), Key::Inline { .. }), "{s}");
            assert_eq!(&*Key::from(s), s);
        }
        let long = "k".repeat(31);
        assert!(matches!(Key::from(long.as_str()), Key::Heap(_)));
        assert_eq!(&*Key::from(long.as_str()), long);
        let mut m = lru(10);
        for k in ["short", long.as_str(), ""] {
            put(&mut m, k, 1);
            assert_eq!(get(&mut m, k), Some(1), "{k:?}");
        }
    }

    #[test]
    fn least_recently_used_goes_first_and_use_promotes() {
        let mut m = lru(3);
        put(&mut m, "a", 1);
        put(&mut m, "b", 2);
        put(&mut m, "c", 3);
        assert_eq!(get(&mut m, "a"), Some(1));
        put(&mut m, "d", 4); // evicts b, the least recently used
        assert_eq!(keys(&m), ["c", "a", "d"]);
        assert_eq!(get(&mut m, "b"), None);
        assert_eq!(m.len(), 3);
        // peek does not promote
        let h = hash("c");
        assert_eq!(m.peek(h, "c"), Some(&3));
        assert_eq!(m.peek_lru(), Some(("c", &3)));
        // replacing promotes and keeps the count
        put(&mut m, "c", 30);
        assert_eq!(keys(&m), ["a", "d", "c"]);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn freed_slots_are_reused_and_resize_evicts() {
        let mut m = lru(1000);
        for i in 0..100 {
            put(&mut m, &format!("k{i}"), i);
        }
        for i in 0..50 {
            let k = format!("k{i}");
            let h = hash(&k);
            assert_eq!(m.pop(h, &k), Some(i));
        }
        assert_eq!(m.len(), 50);
        for i in 100..150 {
            put(&mut m, &format!("k{i}"), i);
        }
        assert_eq!(m.slots.len(), 100, "slots of removed entries are reused");
        let mut stored: Vec<u32> = m.iter_stored().map(|(_, v)| *v).collect();
        stored.sort();
        assert_eq!(
            stored,
            (50..150).collect::<Vec<_>>(),
            "free slots are skipped"
        );
        assert_eq!(m.pop_lru(), Some(50));
        m.resize(10);
        assert_eq!(m.len(), 10);
        assert_eq!(
            keys(&m),
            (140..150).map(|i| format!("k{i}")).collect::<Vec<_>>()
        );
        for i in 140..150 {
            assert_eq!(get(&mut m, &format!("k{i}")), Some(i));
        }
        while m.pop_lru().is_some() {}
        assert_eq!(m.len(), 0);
        assert_eq!(m.peek_lru(), None);
        put(&mut m, "again", 7);
        assert_eq!(get(&mut m, "again"), Some(7));
    }
}
