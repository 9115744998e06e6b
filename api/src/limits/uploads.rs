//! Caps on key uploads streamed at once: a few per seller (429 beyond), and a few for the
//! whole process (503 beyond), so that uploads cannot take every database connection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use uuid::Uuid;

use crate::error::ApiError;

pub struct UploadSlots {
    max_overall: usize,
    max_per_seller: usize,
    /// Uploads running, per seller.
    running: Mutex<HashMap<Uuid, usize>>,
}

/// A running upload; its slot is given back when this is dropped.
pub struct UploadSlot {
    slots: Arc<UploadSlots>,
    seller: Uuid,
}

impl UploadSlots {
    pub fn new(max_overall: usize, max_per_seller: usize) -> Arc<Self> {
        Arc::new(Self {
            max_overall: max_overall.max(1),
            max_per_seller: max_per_seller.max(1),
            running: Mutex::new(HashMap::new()),
        })
    }

    pub fn take(self: &Arc<Self>, seller: Uuid) -> Result<UploadSlot, ApiError> {
        let mut running = self.running.lock().expect("upload slots");
        if running.get(&seller).copied().unwrap_or(0) >= self.max_per_seller {
            return Err(ApiError::RateLimited {
                retry_after_secs: 5,
            });
        }
        if running.values().sum::<usize>() >= self.max_overall {
            return Err(ApiError::Unavailable);
        }
        *running.entry(seller).or_default() += 1;
        Ok(UploadSlot {
            slots: self.clone(),
            seller,
        })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut running = self.slots.running.lock().expect("upload slots");
        if let Some(n) = running.get_mut(&self.seller) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.seller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_seller_and_overall_and_given_back() {
        let slots = UploadSlots::new(3, 2);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert!(matches!(slots.take(a), Err(ApiError::RateLimited { .. })));
        let _b1 = slots.take(b).unwrap();
        assert!(matches!(slots.take(b), Err(ApiError::Unavailable)));
        drop(a1);
        assert!(slots.take(b).is_ok());
    }
}
