//! XML answers (`format = "xml"`, NMI's query API) as the JSON shape reply expressions read.
//!
//! The document becomes `{root: value}`. An element with child elements is an object of its
//! children by local name (namespaces dropped); a name that occurs more than once becomes an
//! array, in document order. Any other element is its trimmed text (`""` when empty).
//! Attributes are kept as `@name` keys of an element that has children; text between child
//! elements is ignored. So `<r><t><id>1</id></t><t><id>2</id></t></r>` reads as
//! `{"r": {"t": [{"id": "1"}, {"id": "2"}]}}`, and with one `<t>` as `{"r": {"t": {"id": "1"}}}`
//! (an expression tells the two apart with `is mapping` / `is sequence`).
//!
//! A document type declaration is refused (roxmltree's default): no entity expansion.

use serde_json::{Map, Value};

use crate::processor::ProcessorError;

/// Parses `text` into the JSON shape above.
pub(crate) fn to_json(text: &str) -> Result<Value, ProcessorError> {
    let doc =
        roxmltree::Document::parse(text).map_err(|_| ProcessorError::BadResponse("not XML"))?;
    let root = doc.root_element();
    let mut top = Map::new();
    top.insert(root.tag_name().name().to_owned(), element(root));
    Ok(Value::Object(top))
}

fn element(node: roxmltree::Node<'_, '_>) -> Value {
    let children: Vec<_> = node.children().filter(|c| c.is_element()).collect();
    if children.is_empty() {
        return Value::String(node.text().unwrap_or("").trim().to_owned());
    }
    let mut map = Map::new();
    for attr in node.attributes() {
        map.insert(
            format!("@{}", attr.name()),
            Value::String(attr.value().to_owned()),
        );
    }
    for child in children {
        let name = child.tag_name().name().to_owned();
        let value = element(child);
        match map.get_mut(&name) {
            None => {
                map.insert(name, value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(first) => {
                let first = std::mem::take(first);
                map.insert(name, Value::Array(vec![first, value]));
            }
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn elements_become_objects_repeated_ones_arrays() {
        let one = r#"<?xml version="1.0" encoding="UTF-8"?>
<nm_response>
  <transaction><transaction_id>27</transaction_id><condition>pendingsettlement</condition>
    <action><action_type>sale</action_type><success>1</success></action>
  </transaction>
</nm_response>"#;
        assert_eq!(
            to_json(one).unwrap(),
            json!({"nm_response": {"transaction": {"transaction_id": "27",
                "condition": "pendingsettlement",
                "action": {"action_type": "sale", "success": "1"}}}})
        );
        let two = "<r a=\"x\"><t><id>1</id></t><t><id>2</id></t><t><id>3</id></t><e/></r>";
        assert_eq!(
            to_json(two).unwrap(),
            json!({"r": {"@a": "x", "t": [{"id": "1"}, {"id": "2"}, {"id": "3"}], "e": ""}})
        );
        assert_eq!(
            to_json("<nm_response></nm_response>").unwrap(),
            json!({"nm_response": ""})
        );
        let ns = r#"<s:Envelope xmlns:s="urn:x"><s:Body>ok</s:Body></s:Envelope>"#;
        assert_eq!(to_json(ns).unwrap(), json!({"Envelope": {"Body": "ok"}}));
    }

    #[test]
    fn malformed_xml_and_entities_are_refused() {
        assert!(to_json("<a><b></a>").is_err());
        assert!(to_json("response=1&x=2").is_err());
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><a>&x;&x;</a>"#;
        assert!(to_json(bomb).is_err());
    }
}
