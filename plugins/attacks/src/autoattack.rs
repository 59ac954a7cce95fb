//! AutoAttack (Croce & Hein, 2020): an ensemble of parameter-free attacks run in a fixed
//! order, each only on the images no earlier attack has broken. An image counts as
//! robust only if every attack fails on it; the output holds, per image, the first
//! adversarial example found, else the clean image.
//!
//! `version = "standard"` runs APGD-CE, APGD-T (targeted DLR), FAB-T and Square (5000
//! queries); `"rand"` (for randomised defences) runs APGD-CE and APGD-DLR with
//! expectation over 20 draws per gradient; a list names the attacks to run, in order.
use crate::pgd::NormName;
use sat_core::{
    component::{create, Configurable},
    Attack, AttackBox, Batch, ComponentBox, ComponentKind, Epsilon, Oracle, PluginError,
    ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// A named version of the ensemble.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VersionName {
    /// APGD-CE, APGD-T, FAB-T, Square.
    Standard,
    /// APGD-CE and APGD-DLR with EOT.
    Rand,
}

/// `version`: a named version or the list of attacks to run, in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Version {
    /// `"standard"` or `"rand"`.
    Named(VersionName),
    /// Attack names among `apgd-ce`, `apgd-dlr`, `apgd-t`, `fab`, `fab-t`, `square`.
    List(Vec<String>),
}

/// The attacks a custom `version` list may name.
pub const MEMBERS: [&str; 6] = ["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"];

/// Configuration of `autoattack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoAttackConfig {
    /// `"standard"`, `"rand"` or a list of attacks.
    pub version: Version,
    /// `"linf"` or `"l2"`.
    pub norm: NormName,
    /// Radius of the ball.
    pub epsilon: Epsilon,
    /// Iterations of APGD-CE, APGD-DLR, APGD-T and FAB (AutoAttack: 100).
    pub steps: u32,
    /// Queries of Square (AutoAttack: 5000).
    pub queries: u32,
    /// Target classes of APGD-T and FAB-T (AutoAttack: 9, capped at classes − 1).
    pub target_classes: u32,
    /// Gradient draws averaged per step by the APGD attacks of the `rand` version.
    pub eot_iter: u32,
}

impl Default for AutoAttackConfig {
    fn default() -> Self {
        Self {
            version: Version::Named(VersionName::Standard),
            norm: NormName::Linf,
            epsilon: Epsilon(8.0 / 255.0),
            steps: 100,
            queries: 5000,
            target_classes: 9,
            eot_iter: 20,
        }
    }
}

impl AutoAttackConfig {
    /// The attacks to run, in order.
    fn members(&self) -> Vec<String> {
        let names: &[&str] = match &self.version {
            Version::Named(VersionName::Standard) => &["apgd-ce", "apgd-t", "fab-t", "square"],
            Version::Named(VersionName::Rand) => &["apgd-ce", "apgd-dlr"],
            Version::List(list) => return list.clone(),
        };
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The TOML table of member `name`, from the ensemble's settings.
    fn member_table(&self, name: &str) -> String {
        let norm = match self.norm {
            NormName::Linf => "linf",
            NormName::L2 => "l2",
        };
        let mut table = format!("norm = \"{norm}\"\nepsilon = {:?}\n", self.epsilon.0);
        match name {
            "square" => table += &format!("queries = {}\n", self.queries),
            _ => table += &format!("steps = {}\n", self.steps),
        }
        if matches!(name, "apgd-t" | "fab-t") {
            table += &format!("target_classes = {}\n", self.target_classes);
        }
        let rand = self.version == Version::Named(VersionName::Rand);
        if rand && name.starts_with("apgd") {
            table += &format!("eot_iter = {}\n", self.eot_iter);
        }
        table
    }
}

/// The AutoAttack ensemble.
pub struct AutoAttack {
    config: AutoAttackConfig,
    members: Vec<(String, AttackBox)>,
}

impl Configurable for AutoAttack {
    type Config = AutoAttackConfig;
    fn from_config(config: AutoAttackConfig) -> Result<Self, PluginError> {
        crate::ranges::check(
            "autoattack",
            &[
                ("steps", config.steps),
                ("queries", config.queries),
                ("target_classes", config.target_classes),
                ("eot_iter", config.eot_iter),
            ],
        )?;
        let names = config.members();
        if names.is_empty() {
            return Err(PluginError::config(
                "[autoattack] version lists no attack",
            ));
        }
        let mut members = Vec::new();
        for name in names {
            if !MEMBERS.contains(&name.as_str()) {
                return Err(PluginError::config(format!(
                    "[autoattack] version: `{name}` is not an AutoAttack member; members: {}",
                    MEMBERS.join(", ")
                )));
            }
            let made = create(ComponentKind::Attack, &name, &config.member_table(&name))
                .map_err(|e| PluginError::config(format!("[autoattack] {name}: {e}")))?;
            let ComponentBox::Attack(attack) = made else {
                return Err(PluginError::config(format!(
                    "[autoattack] `{name}` is not an attack"
                )));
            };
            members.push((name, attack));
        }
        Ok(Self { config, members })
    }
}

impl Attack for AutoAttack {
    fn threat_model(&self) -> ThreatModel {
        let steps = self
            .members
            .iter()
            .filter_map(|(_, a)| a.threat_model().into_result().ok())
            .map(|t| t.steps)
            .fold(0u32, u32::saturating_add);
        ThreatModel {
            norm: self.config.norm.into(),
            epsilon: self.config.epsilon.0,
            steps,
        }
    }

    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let (x, labels) = (batch.images(), batch.labels());
        let predicted = oracle.logits(&x)?.f_argmax(-1, false)?;
        // Images the model already gets wrong are not attacked.
        let mut robust = predicted.f_eq_tensor(&labels)?;
        let mut adversarial = x.f_detach_copy()?;
        for (name, attack) in &mut self.members {
            let open = robust.f_nonzero()?.f_squeeze_dim(1)?;
            if open.size()[0] == 0 {
                break;
            }
            let (xs, ys) = (x.f_index_select(0, &open)?, labels.f_index_select(0, &open)?);
            let sub = Batch::new(&xs, &ys, batch.epoch, batch.epochs, batch.phase);
            let out = attack
                .perturb(&sub, oracle.as_abi())
                .into_result()
                .map_err(|e| PluginError::new(e.kind, format!("[autoattack] {name}: {}", e.message)))?
                .into_tensor();
            let broken = oracle
                .logits(&out)?
                .f_argmax(-1, false)?
                .f_ne_tensor(&ys)?;
            let rows = broken.f_nonzero()?.f_squeeze_dim(1)?;
            let at = open.f_index_select(0, &rows)?;
            adversarial = adversarial.f_index_copy(0, &at, &out.f_index_select(0, &rows)?)?;
            robust = robust.f_index_fill(0, &at, 0)?;
        }
        Ok(adversarial.f_to_kind(Kind::Float)?)
    }
}

sat_core::register_attack!(
    AutoAttack,
    name = "autoattack",
    description = "AutoAttack ensemble (standard: APGD-CE, APGD-T, FAB-T, Square; rand; or a list), linf or l2",
);

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::{testing::LinearModel, Phase};
    use tch::Device;

    fn ensemble(text: &str) -> Result<AutoAttack, PluginError> {
        AutoAttack::from_config(sat_core::parse_config("autoattack", text)?)
    }

    #[test]
    fn is_at_least_as_strong_as_its_first_member_and_stays_in_the_ball() {
        let _generator = crate::tests::generator();
        let adapter = LinearModel::random(5, 48, 8).oracle();
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        tch::manual_seed(3);
        let x = Tensor::rand([32, 3, 4, 4], (Kind::Float, Device::Cpu));
        // Labelled with the model's predictions: every image starts correct, so the
        // first member sees the whole batch, exactly as when run alone.
        let y = oracle.logits(&x).unwrap().argmax(-1, false);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let accuracy = |t: &Tensor| {
            let right = oracle.logits(t).unwrap().argmax(-1, false).eq_tensor(&y);
            right.to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
        };
        let eps = 0.05;
        let settings = format!("epsilon = {eps}\nsteps = 5");
        let mut alone = crate::apgd::Apgd::from_config(
            sat_core::parse_config("apgd-ce", &settings).unwrap(),
        )
        .unwrap();
        tch::manual_seed(9);
        let first = alone.perturb(&batch, oracle).unwrap();
        let list = format!("version = [\"apgd-ce\", \"square\"]\nqueries = 50\n{settings}");
        let mut aa = ensemble(&list).unwrap();
        tch::manual_seed(9);
        let adv = aa.perturb(&batch, oracle).unwrap();
        let (a_first, a_all) = (accuracy(&first), accuracy(&adv));
        assert!(a_first < 1.0 && a_all <= a_first, "ensemble {a_all} vs apgd-ce {a_first}");
        assert!((&adv - &x).abs().max().double_value(&[]) <= eps + 1e-6);
        // Robust images come back clean; broken ones are misclassified.
        let robust = oracle.logits(&adv).unwrap().argmax(-1, false).eq_tensor(&y);
        let unchanged = (&adv - &x).abs().flatten(1, -1).amax([1i64].as_slice(), false).eq(0.0);
        assert!(robust.equal(&unchanged), "robust images must be returned clean");
        assert_eq!(aa.threat_model().steps, 5 + 50);
    }

    #[test]
    fn refuses_members_outside_autoattack() {
        let _generator = crate::tests::generator();
        let err = ensemble("version = [\"apgd-ce\", \"pgd\"]").err().unwrap();
        assert!(err.message.contains("`pgd` is not an AutoAttack member"), "{err}");
        assert!(ensemble("version = []").is_err());
    }

    #[test]
    fn versions_expand_to_their_members_in_order() {
        let _generator = crate::tests::generator();
        let standard = AutoAttackConfig::default();
        assert_eq!(standard.members(), ["apgd-ce", "apgd-t", "fab-t", "square"]);
        let rand: AutoAttackConfig = sat_core::toml::from_str("version = \"rand\"").unwrap();
        assert_eq!(rand.members(), ["apgd-ce", "apgd-dlr"]);
        assert!(rand.member_table("apgd-dlr").contains("eot_iter = 20"));
        let list: AutoAttackConfig =
            sat_core::toml::from_str("version = [\"square\", \"apgd-ce\"]\nnorm = \"l2\"").unwrap();
        assert_eq!(list.members(), ["square", "apgd-ce"]);
        assert!(list.member_table("square").contains("norm = \"l2\""));
        assert!(sat_core::toml::from_str::<AutoAttackConfig>("version = \"plus\"").is_err());
    }
}
