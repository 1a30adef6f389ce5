//! MongoDB's comparison order of BSON values (`canonicalizeBSONType`, then by value): one
//! table for the initial copy's resume filter (`source::copy_resume`, every `_id` after
//! one), `repair`'s `_id` ranges, and `verify`'s and `repair`'s walks of both sides in
//! `_id` order. Checked against a real mongod's sort in `tests/documentdb.rs`: `undefined`
//! sorts before `null`, not with it.

use std::cmp::Ordering;

use bson::Bson;

/// The type brackets in comparison order, each with the `$type` numbers it holds. Values of
/// different brackets compare by bracket alone; within one they compare by value (numbers
/// with numbers whatever their width, strings with symbols).
pub const BRACKETS: &[&[i32]] = &[
    &[-1],            // MinKey
    &[6],             // undefined
    &[10],            // null
    &[1, 16, 18, 19], // double, int, long, decimal
    &[2, 14],         // string, symbol
    &[3],             // object
    &[4],             // array
    &[5],             // binData
    &[7],             // objectId
    &[8],             // bool
    &[9],             // date
    &[17],            // timestamp
    &[11],            // regex
    &[12],            // dbPointer
    &[13],            // javascript
    &[15],            // javascriptWithScope
    &[127],           // MaxKey
];

/// The value's `$type` number.
pub fn type_number(value: &Bson) -> i32 {
    match value {
        Bson::MinKey => -1,
        Bson::Undefined => 6,
        Bson::Null => 10,
        Bson::Double(_) => 1,
        Bson::Int32(_) => 16,
        Bson::Int64(_) => 18,
        Bson::Decimal128(_) => 19,
        Bson::String(_) => 2,
        Bson::Symbol(_) => 14,
        Bson::Document(_) => 3,
        Bson::Array(_) => 4,
        Bson::Binary(_) => 5,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 17,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::MaxKey => 127,
    }
}

/// The value's position in [`BRACKETS`].
pub fn bracket(value: &Bson) -> usize {
    let own = type_number(value);
    BRACKETS.iter().position(|b| b.contains(&own)).unwrap_or(BRACKETS.len() - 1)
}

/// MongoDB's sort order across BSON types (MinKey < undefined < null < numbers < strings < objects <
/// arrays < binary < ObjectId < bool < date < timestamp < regex < MaxKey), and within a type.
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (x, y) if is_number(x) => number(x).partial_cmp(&number(y)).unwrap_or(Ordering::Equal),
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::Document(x), Bson::Document(y)) => {
            for (ex, ey) in x.iter().zip(y.iter()) {
                let o = type_rank(ex.1)
                    .cmp(&type_rank(ey.1))
                    .then_with(|| ex.0.as_bytes().cmp(ey.0.as_bytes()))
                    .then_with(|| compare(ex.1, ey.1));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Array(x), Bson::Array(y)) => {
            for (ex, ey) in x.iter().zip(y.iter()) {
                let o = compare(ex, ey);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => (x.time, x.increment).cmp(&(y.time, y.increment)),
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => {
            x.pattern.cmp(&y.pattern).then_with(|| x.options.cmp(&y.options))
        }
        _ => Ordering::Equal,
    }
}

fn type_rank(b: &Bson) -> usize {
    bracket(b)
}

fn is_number(b: &Bson) -> bool {
    matches!(b, Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_))
}

fn number(b: &Bson) -> f64 {
    match b {
        Bson::Int32(i) => *i as f64,
        Bson::Int64(i) => *i as f64,
        Bson::Double(d) => *d,
        Bson::Decimal128(d) => d.to_string().parse().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_number_has_a_bracket() {
        for b in BRACKETS.iter().flat_map(|b| b.iter()) {
            assert_eq!(BRACKETS.iter().filter(|x| x.contains(b)).count(), 1, "type {b}");
        }
        assert!(bracket(&Bson::Undefined) < bracket(&Bson::Null));
        assert_eq!(bracket(&Bson::Int32(1)), bracket(&Bson::Double(1.0)));
        assert_eq!(bracket(&Bson::MaxKey), BRACKETS.len() - 1);
    }
}
