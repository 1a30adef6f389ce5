//! MongoDB's comparison order of BSON types (`canonicalizeBSONType`): one table for the
//! initial copy's resume filter (`source::copy_resume`, every `_id` after one) and
//! `verify`'s walk of both sides in `_id` order. Checked against a real mongod's sort in
//! `tests/documentdb.rs`: `undefined` sorts before `null`, not with it.

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
