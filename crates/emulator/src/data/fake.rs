//! The Data API's fake data: deterministic per connection, seeded from its
//! `credentials_id` (the same connection always has the same accounts, cards and
//! transactions; the timestamps of balances and pending transactions follow the clock).

use serde_json::{Value, json};
use time::{Date, Duration as Days, OffsetDateTime};

/// A bank the dialog offers.
pub(crate) struct Provider {
    pub(crate) id: &'static str,
    pub(crate) display_name: &'static str,
    pub(crate) logo_uri: &'static str,
}

/// The emulator's banks.
pub(crate) const PROVIDERS: [Provider; 2] = [
    Provider {
        id: "mock",
        display_name: "Mock Bank",
        logo_uri: "https://truelayer-provider-assets.s3.amazonaws.com/global/logos/mock.svg",
    },
    Provider {
        id: "ob-mock-2",
        display_name: "Mock Bank 2",
        logo_uri: "https://truelayer-provider-assets.s3.amazonaws.com/global/logos/mock.svg",
    },
];

/// The provider with this id.
pub(crate) fn provider(id: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.id == id)
}

/// The provider object of Data API answers.
pub(crate) fn provider_json(id: &str) -> Value {
    let p = provider(id).unwrap_or(&PROVIDERS[0]);
    json!({ "provider_id": p.id, "display_name": p.display_name, "logo_uri": p.logo_uri })
}

/// FNV-1a: a stable seed from text (std's hasher may change between releases).
fn seed(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A deterministic generator for `parts`.
fn rng(parts: &[&str]) -> Rng {
    Rng(seed(parts) | 1)
}

/// xorshift64*: small, and stable across versions of any crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn hex(&mut self, digits: usize) -> String {
        let mut s = String::new();
        while s.len() < digits {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(digits);
        s
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    /// An amount in pounds with pence, between `min` and `max` pounds.
    fn amount(&mut self, min: u64, max: u64) -> f64 {
        let pence = min * 100 + self.below((max - min) * 100 + 1);
        pence as f64 / 100.0
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

/// What is fixed about a connection's data.
pub(crate) struct Bank<'a> {
    pub(crate) credentials_id: &'a str,
    pub(crate) provider_id: &'a str,
    /// Now on the emulator's clock, for update timestamps.
    pub(crate) now: i64,
}

fn timestamp(unix: i64) -> String {
    crate::clock::rfc3339(unix)
}

impl Bank<'_> {
    /// `GET /info`'s one result.
    pub(crate) fn info(&self) -> Value {
        let mut r = rng(&[self.credentials_id, "info"]);
        let first = r.pick(&["John", "Jane", "Alex", "Sam", "Priya", "Tomasz"]);
        let last = r.pick(&["Doe", "Smith", "Patel", "Nowak", "Jones"]);
        json!({
            "update_timestamp": timestamp(self.now),
            "full_name": format!("{first} {last}"),
            "date_of_birth": format!("19{}-0{}-1{}T00:00:00", 60 + r.below(40), 1 + r.below(9), r.below(10)),
            "addresses": [{
                "address": format!("{} High Street", 1 + r.below(200)),
                "city": r.pick(&["London", "Leeds", "Bristol", "Glasgow"]),
                "zip": format!("N{} {}AB", 1 + r.below(20), r.below(10)),
                "country": "GB",
            }],
            "emails": [format!("{}.{}@example.com", first.to_lowercase(), last.to_lowercase())],
            "phones": [format!("+447{}", r.digits(9))],
        })
    }

    /// The connection's accounts (`GET /accounts`).
    pub(crate) fn accounts(&self) -> Vec<Value> {
        [("TRANSACTION", "Current Account"), ("SAVINGS", "Savings Account")]
            .iter()
            .enumerate()
            .map(|(i, (kind, name))| {
                let mut r = rng(&[self.credentials_id, "account", &i.to_string()]);
                let number = r.digits(8);
                let sort_code = format!("{}-{}-{}", r.digits(2), r.digits(2), r.digits(2));
                json!({
                    "update_timestamp": timestamp(self.now),
                    "account_id": r.hex(32),
                    "account_type": kind,
                    "display_name": name,
                    "currency": "GBP",
                    "account_number": {
                        "iban": format!("GB{}MOCK{}{}", r.digits(2), sort_code.replace('-', ""), number),
                        "swift_bic": "MOCKGB21",
                        "number": number,
                        "sort_code": sort_code,
                    },
                    "provider": provider_json(self.provider_id),
                })
            })
            .collect()
    }

    /// The connection's cards (`GET /cards`).
    pub(crate) fn cards(&self) -> Vec<Value> {
        let mut r = rng(&[self.credentials_id, "card", "0"]);
        vec![json!({
            "update_timestamp": timestamp(self.now),
            "account_id": r.hex(32),
            "card_network": r.pick(&["VISA", "MASTERCARD"]),
            "card_type": "CREDIT",
            "currency": "GBP",
            "display_name": "Mock Credit Card",
            "partial_card_number": r.digits(4),
            "name_on_card": "J Doe",
            "valid_from": "2022-01",
            "valid_to": "2030-12",
            "provider": provider_json(self.provider_id),
        })]
    }

    /// An account's balance.
    pub(crate) fn account_balance(&self, account_id: &str) -> Value {
        let mut r = rng(&[account_id, "balance"]);
        let current = r.amount(50, 5000);
        json!({
            "currency": "GBP",
            "available": current + 500.0,
            "current": current,
            "overdraft": 500.0,
            "update_timestamp": timestamp(self.now),
        })
    }

    /// A card's balance.
    pub(crate) fn card_balance(&self, account_id: &str) -> Value {
        let mut r = rng(&[account_id, "balance"]);
        let current = r.amount(0, 2000);
        json!({
            "currency": "GBP",
            "available": 3000.0 - current,
            "current": current,
            "credit_limit": 3000.0,
            "last_statement_balance": r.amount(0, 1500),
            "last_statement_date": "2024-01-01T00:00:00Z",
            "payment_due": r.amount(25, 100),
            "payment_due_date": "2024-01-25T00:00:00Z",
            "update_timestamp": timestamp(self.now),
        })
    }

    /// Settled transactions from `from` to `to` (both included), newest first: 0 to 2 a day,
    /// each day's the same whenever asked.
    pub(crate) fn transactions(&self, account_id: &str, from: Date, to: Date) -> Vec<Value> {
        let today = OffsetDateTime::from_unix_timestamp(self.now)
            .map(|t| t.date())
            .unwrap_or(to);
        let mut out = Vec::new();
        let mut day = to.min(today);
        while day >= from {
            let key = day.to_julian_day().to_string();
            let mut r = rng(&[account_id, "transactions", &key]);
            for n in 0..r.below(3) {
                let credit = r.below(5) == 0;
                let (description, category, classification) = if credit {
                    ("SALARY ACME LTD", "CREDIT", "Income")
                } else {
                    let (d, c) = match r.below(4) {
                        0 => ("TESCO STORES", "Groceries"),
                        1 => ("TFL TRAVEL", "Transport"),
                        2 => ("COFFEE HOUSE", "Food & Dining"),
                        _ => ("ONLINE SHOP", "Shopping"),
                    };
                    (d, "PURCHASE", c)
                };
                let amount = if credit {
                    r.amount(100, 2500)
                } else {
                    -r.amount(1, 120)
                };
                let seconds = 8 * 3600 + r.below(12 * 3600) as i64;
                let at = day.midnight().assume_utc().unix_timestamp() + seconds;
                out.push(json!({
                    "transaction_id": format!("{}{n}", r.hex(31)),
                    "timestamp": timestamp(at),
                    "description": description,
                    "amount": amount,
                    "currency": "GBP",
                    "transaction_type": if credit { "CREDIT" } else { "DEBIT" },
                    "transaction_category": category,
                    "transaction_classification": [classification],
                    "merchant_name": description,
                    "meta": { "provider_transaction_category": if credit { "CRE" } else { "DEB" } },
                }));
            }
            match day.previous_day() {
                Some(d) => day = d,
                None => break,
            }
        }
        out
    }

    /// Pending transactions: one or two, stamped today.
    pub(crate) fn pending(&self, account_id: &str) -> Vec<Value> {
        let mut r = rng(&[account_id, "pending"]);
        (0..1 + r.below(2))
            .map(|n| {
                json!({
                    "transaction_id": format!("pending-{}{n}", r.hex(24)),
                    "timestamp": timestamp(self.now - (n as i64 + 1) * 3600),
                    "description": r.pick(&["CARD PAYMENT PENDING", "CONTACTLESS PENDING"]),
                    "amount": -r.amount(1, 60),
                    "currency": "GBP",
                    "transaction_type": "DEBIT",
                    "transaction_category": "PURCHASE",
                    "transaction_classification": [],
                    "meta": {},
                })
            })
            .collect()
    }

    /// An account's direct debits.
    pub(crate) fn direct_debits(&self, account_id: &str) -> Vec<Value> {
        let mut r = rng(&[account_id, "direct_debits"]);
        ["COUNCIL TAX", "MOBILE PHONE"]
            .iter()
            .map(|name| {
                json!({
                    "direct_debit_id": r.hex(32),
                    "timestamp": "2023-01-01T00:00:00Z",
                    "name": name,
                    "status": "Active",
                    "previous_payment_timestamp": "2024-01-01T00:00:00Z",
                    "previous_payment_amount": r.amount(10, 200),
                    "currency": "GBP",
                    "meta": { "provider_mandate_identification": r.hex(12) },
                })
            })
            .collect()
    }

    /// An account's standing orders.
    pub(crate) fn standing_orders(&self, account_id: &str) -> Vec<Value> {
        let mut r = rng(&[account_id, "standing_orders"]);
        let amount = r.amount(50, 900);
        vec![json!({
            "frequency": "IntrvlMnthDay:01:01",
            "status": "Active",
            "timestamp": "2023-01-01T00:00:00Z",
            "currency": "GBP",
            "next_payment_date": "2024-02-01T00:00:00Z",
            "next_payment_amount": amount,
            "first_payment_date": "2023-02-01T00:00:00Z",
            "first_payment_amount": amount,
            "reference": "RENT",
            "payee": "A LANDLORD",
            "meta": { "provider_account_id": r.hex(12) },
        })]
    }
}

/// The default range of `transactions` without `from`/`to`: the last 90 days.
pub(crate) fn default_from(to: Date) -> Date {
    to.checked_sub(Days::days(90)).unwrap_or(to)
}
