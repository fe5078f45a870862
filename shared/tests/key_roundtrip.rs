//! Property tests: any values rendered into a key parse back to the same values, for every
//! template shape (plain, composite, hash-tagged, with a suffix).

use pg_redis_shared::KeyTemplate;
use proptest::prelude::*;

const TEMPLATES: &[&str] = &[
    "users:{id}",
    "order_items:{order_id}:{item_no}",
    "billing.invoices:{id}",
    "user:{{id}}",
    "order:{{customer}}:{id}:v{version}",
    "u:{id}:profile",
    "t:{a}x:{b}",
];

fn any_value() -> impl Strategy<Value = String> {
    // Bias towards the characters that matter: separators, braces, escapes, unicode.
    prop_oneof![
        "[:{}%a-z0-9]{0,12}",
        ".{0,24}",
        Just(String::new()),
        Just("users:1; DROP TABLE users".to_string()),
        Just("%3A%25{}}{::".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn render_then_parse_round_trips(t in 0..TEMPLATES.len(), values in prop::collection::vec(any_value(), 3)) {
        let tpl = KeyTemplate::parse(TEMPLATES[t]).unwrap();
        let n = tpl.columns().count();
        let values = &values[..n];
        let key = tpl.render_values(values).unwrap();
        prop_assert_eq!(tpl.parse_key(&key).unwrap(), values.to_vec());
        prop_assert!(tpl.matches(&key));
    }

    #[test]
    fn parse_never_panics_and_is_canonical(t in 0..TEMPLATES.len(), tail in ".{0,40}") {
        let tpl = KeyTemplate::parse(TEMPLATES[t]).unwrap();
        // Start most keys with the template's prefix so parsing gets past it.
        let key = format!("{}{}", tpl.prefix(), tail);
        if let Ok(values) = tpl.parse_key(&key) {
            // Every key that parses is the one rendering gives: one key per row, never two.
            prop_assert_eq!(tpl.render_values(&values).unwrap(), key);
        }
    }

    #[test]
    fn hash_tag_holds_exactly_the_value(v in any_value()) {
        let tpl = KeyTemplate::parse("user:{{id}}").unwrap();
        let key = tpl.render_values(&[v.as_str()]).unwrap();
        // Redis hashes the text between the first '{' and the next '}'.
        let open = key.find('{').unwrap();
        let close = open + 1 + key[open + 1..].find('}').unwrap();
        prop_assert_eq!(&key[open + 1..close], pg_redis_shared::key_template::escape_value(&v));
        prop_assert_eq!(close, key.len() - 1);
    }

    #[test]
    fn template_parser_never_panics(t in ".{0,30}") {
        let _ = KeyTemplate::parse(&t);
    }
}
