//! The real Qwen3 tokenizer through the `tokenizers` crate gives transformers' ids and text.

use std::path::Path;

#[derive(serde::Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

#[test]
fn tokenizations_match_transformers() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let tok = tokenizers::Tokenizer::from_file(fixtures.join("tiny-qwen3/tokenizer.json"))
        .expect("tokenizer loads");
    let text =
        std::fs::read_to_string(fixtures.join("goldens/tokenize_cases.json")).expect("goldens");
    let cases: Vec<TokCase> = serde_json::from_str(&text).expect("json");
    assert!(cases.len() >= 8);
    for c in cases {
        let enc = tok.encode(c.text.as_str(), false).expect("encode");
        assert_eq!(enc.get_ids(), c.ids.as_slice(), "ids of {:?}", c.text);
        let dec = tok.decode(&c.ids, false).expect("decode");
        assert_eq!(dec, c.decoded, "text of {:?}", c.text);
    }
}
