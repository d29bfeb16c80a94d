//! `<rfs>`: replicated directories and what is not replicated in them.

use roxmltree::Node;

use super::xml::XmlFile;
use super::Importer;
use crate::error::ConfigError;
use crate::model::ModuleConfig;

impl Importer {
    /// `<rfs>`: each `<replicated dir>` becomes a `[[replicated]]`
    /// directory; every other attribute and element is reported.
    pub(super) fn rfs(
        &mut self,
        f: &XmlFile<'_>,
        rfs: Node<'_, '_>,
        config: &mut ModuleConfig,
    ) -> Result<(), ConfigError> {
        self.check_attributes(f, rfs, &[]);
        for el in rfs.children().filter(Node::is_element) {
            if el.tag_name().name() != "replicated" {
                self.unsupported_element(f, el);
                continue;
            }
            self.check_attributes(f, el, &["dir"]);
            let Some(dir) = self.attr(f, el, "dir") else {
                return Err(f.error(
                    el.range().start,
                    "<replicated>",
                    "the dir attribute is required",
                ));
            };
            let index = config.replicated.len();
            self.note_attr(&format!("replicated[{index}].dir"), f, &dir);
            self.note_attr(&format!("replicated[{index}]"), f, &dir);
            let mut replicated = crate::model::ReplicatedDir {
                dir: dir.value.into(),
                ..Default::default()
            };
            for child in el.children().filter(Node::is_element) {
                if child.tag_name().name() == "notreplicated" {
                    self.notreplicated(f, child, index, &mut replicated);
                } else {
                    self.unsupported_element(f, child);
                }
            }
            config.replicated.push(replicated);
        }
        Ok(())
    }

    /// `<notreplicated path>` or `<notreplicated regexpath>` of the
    /// `index`th `<replicated>`: an exclusion (SafeKit §13.7.3). A
    /// `regexpath="!..."` (replicate only what matches) is reported.
    pub(super) fn notreplicated(
        &mut self,
        f: &XmlFile<'_>,
        el: Node<'_, '_>,
        index: usize,
        replicated: &mut crate::model::ReplicatedDir,
    ) {
        self.check_attributes(f, el, &["path", "regexpath"]);
        if let Some(path) = self.attr(f, el, "path") {
            let field = format!("replicated[{index}].exclude[{}]", replicated.exclude.len());
            self.note_attr(&field, f, &path);
            replicated.exclude.push(path.value.into());
        }
        if let Some(regex) = self.attr(f, el, "regexpath") {
            if regex.value.starts_with('!') {
                self.warn(
                    f,
                    regex.offset,
                    &regex.field,
                    "replicating only the entries that match is not supported; ignored (they are all replicated)",
                );
            } else {
                let field = format!(
                    "replicated[{index}].exclude_names[{}]",
                    replicated.exclude_names.len()
                );
                self.note_attr(&field, f, &regex);
                replicated.exclude_names.push(regex.value.to_string());
            }
        }
    }
}
