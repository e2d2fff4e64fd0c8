"""The report simulator's phrase tables (data, not code): how each finding, normal statement,
filler sentence and indication may be worded in a simulated MIMIC-CXR or CT-RATE report.

Used by :mod:`privrad.data.simulate`; kept apart so that the simulator reads as code and these
tables as the data they are.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------
# MIMIC-CXR
# --------------------------------------------------------------------------------------

CXR_SLOTS = {
    "side": ["right", "left", "bilateral"],
    "side1": ["right", "left"],
    "loc": ["at the right base", "at the left base", "in the right lower lobe", "in the left lower lobe",
            "in the right middle lobe", "in the lingula", "in the right upper lobe", "at both lung bases",
            "in the retrocardiac region", "in the left upper lobe", "in the right perihilar region"],
    "sev": ["small", "moderate", "large", "small to moderate", "moderate to large", "trace"],
    "mild": ["mild", "moderate", "severe", "mild to moderate"],
    "cmp": ["unchanged", "new", "increased", "slightly decreased", "stable", "persistent", "worsened",
            "similar", "slightly improved", "grossly unchanged"],
    "hedge": ["possible", "questionable", "a subtle", "a possible", "equivocal"],
    "size": ["5 mm", "7 mm", "8 mm", "1.2 cm", "1.5 cm", "2 cm", "3.1 cm"],
    "rib": ["left sixth", "right seventh", "left posterior eighth", "right lateral fifth", "left anterior fourth"],
}

# label -> (positive phrasings, negative phrasings, uncertain phrasings)
CXR_PHRASES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "Atelectasis": (
        ["{mild} bibasilar atelectasis", "linear atelectasis {loc}", "plate-like atelectasis {loc}",
         "subsegmental atelectasis {loc}", "opacity {loc} most consistent with atelectasis",
         "volume loss {loc} compatible with atelectasis", "collapse of the {side1} lower lobe",
         "{cmp} atelectasis {loc}", "streaky bibasilar opacities reflecting atelectasis"],
        ["no atelectasis", "no evidence of lobar collapse"],
        ["opacity {loc} may reflect atelectasis", "{hedge} atelectasis {loc}",
         "atelectasis cannot be excluded {loc}", "minimal atelectasis versus scarring {loc}"],
    ),
    "Cardiomegaly": (
        ["{mild} cardiomegaly", "the heart is {mild}ly enlarged", "enlarged cardiac silhouette",
         "heart size is {mild}ly enlarged", "{cmp} {mild} enlargement of the cardiac silhouette",
         "cardiomegaly is {cmp}"],
        ["heart size is normal", "no cardiomegaly", "the heart is not enlarged", "normal heart size"],
        ["borderline heart size", "heart size is at the upper limits of normal",
         "{hedge} mild cardiomegaly", "the heart may be mildly enlarged, accentuated by low lung volumes"],
    ),
    "Consolidation": (
        ["focal consolidation {loc}", "airspace consolidation {loc}", "dense consolidation {loc}",
         "{cmp} consolidation {loc}", "lobar consolidation {loc}"],
        ["no focal consolidation", "no consolidation", "no confluent consolidation"],
        ["consolidation cannot be excluded {loc}", "{hedge} early consolidation {loc}",
         "opacity {loc} could represent consolidation or atelectasis"],
    ),
    "Edema": (
        ["{mild} pulmonary edema", "{mild} interstitial edema", "vascular congestion with {mild} interstitial edema",
         "perihilar haziness and Kerley B lines compatible with pulmonary edema", "{cmp} {mild} pulmonary edema",
         "diffuse bilateral alveolar edema"],
        ["no pulmonary edema", "no evidence of edema", "no overt pulmonary edema"],
        ["{hedge} mild interstitial edema", "cannot exclude mild edema",
         "hazy perihilar opacities may reflect edema", "mild vascular engorgement, possibly early edema"],
    ),
    "Enlarged Cardiomediastinum": (
        ["widened mediastinum", "enlarged cardiomediastinal silhouette", "mediastinal widening {cmp} from prior",
         "the mediastinal contour is widened"],
        ["the mediastinal contours are normal", "the mediastinum is not widened", "normal cardiomediastinal contours"],
        ["mediastinal contours may be slightly widened, possibly due to technique",
         "{hedge} widening of the mediastinum"],
    ),
    "Fracture": (
        ["acute fracture of the {rib} rib", "displaced fracture of the {rib} rib",
         "compression fracture of a mid thoracic vertebral body", "fracture of the {side1} clavicle",
         "healing fracture of the {rib} rib", "{cmp} {rib} rib fracture"],
        ["no acute fracture", "no displaced rib fracture", "no acute osseous injury"],
        ["{hedge} nondisplaced fracture of the {rib} rib", "cortical irregularity of the {rib} rib, possibly a fracture"],
    ),
    "Lung Lesion": (
        ["{size} nodule {loc}", "{size} mass {loc}", "spiculated nodule {loc}", "pulmonary nodule {loc}",
         "{cmp} {size} nodular opacity {loc}", "cavitary lesion {loc}"],
        ["no suspicious pulmonary nodules", "no mass or nodule"],
        ["{hedge} nodule {loc}; CT recommended for further evaluation",
         "nodular opacity {loc} may represent a nipple shadow"],
    ),
    "Lung Opacity": (
        ["patchy opacity {loc}", "hazy opacities {loc}", "increased opacification {loc}",
         "streaky opacities {loc}", "ground-glass opacity {loc}", "airspace disease {loc}",
         "{cmp} opacity {loc}", "ill-defined opacity {loc}"],
        ["the lungs are clear", "no focal airspace opacity", "lungs are well expanded and clear"],
        ["{hedge} subtle opacity {loc}", "questionable opacity {loc}", "opacity {loc} not excluded"],
    ),
    "Pleural Effusion": (
        ["{sev} {side} pleural effusion", "{sev} {side1} effusion", "layering {side1} pleural effusion",
         "blunting of the {side1} costophrenic angle consistent with a small effusion",
         "fluid tracking along the {side1} major fissure", "{cmp} {sev} {side} pleural effusion",
         "{side} pleural effusions are {cmp}"],
        ["no pleural effusion", "no effusion", "the costophrenic angles are sharp", "no large pleural effusion"],
        ["{hedge} small {side1} pleural effusion",
         "blunting of the {side1} costophrenic angle may reflect a small effusion or pleural thickening"],
    ),
    "Pleural Other": (
        ["{side1} pleural thickening", "calcified pleural plaques", "{side1} apical pleural scarring",
         "pleural thickening along the {side1} lateral chest wall"],
        ["no pleural thickening"],
        ["{hedge} pleural thickening at the {side1} apex"],
    ),
    "Pneumonia": (
        ["findings consistent with pneumonia {loc}", "pneumonia {loc}", "opacity {loc} concerning for pneumonia",
         "infectious process {loc}", "{cmp} pneumonia {loc}", "multifocal pneumonia"],
        ["no evidence of pneumonia", "no radiographic evidence of pneumonia"],
        ["pneumonia cannot be excluded", "{hedge} early pneumonia {loc}", "may represent aspiration or pneumonia",
         "atelectasis, though infection is not excluded {loc}", "superimposed infection is not excluded"],
    ),
    "Pneumothorax": (
        ["{sev} {side1} pneumothorax", "{sev} {side1} apical pneumothorax", "{side1} pneumothorax is {cmp}",
         "{sev} {side1} hydropneumothorax", "tiny {side1} apical pneumothorax"],
        ["no pneumothorax", "no evidence of pneumothorax", "no pneumothorax is seen",
         "interval resolution of the previously seen {side1} pneumothorax"],
        ["{hedge} tiny {side1} apical pneumothorax", "a skin fold limits assessment for small pneumothorax"],
    ),
    "Support Devices": (
        ["endotracheal tube terminates 4 cm above the carina", "{side1} internal jugular central venous catheter with tip in the mid SVC",
         "nasogastric tube courses below the diaphragm", "{side1}-sided pacemaker with leads in the right atrium and right ventricle",
         "{side1} PICC line terminates in the lower SVC", "sternotomy wires and mediastinal clips",
         "{side1} chest tube in place", "enteric tube tip in the stomach", "dual-lead {side1}-sided pacemaker is {cmp}",
         "tracheostomy tube in standard position"],
        ["no lines or tubes are seen", "interval removal of the endotracheal tube"],
        [],
    ),
}
CXR_NORMAL = ["No acute cardiopulmonary process.", "No acute intrathoracic abnormality.", "Normal chest radiograph.",
              "No radiographic evidence of acute cardiopulmonary disease.", "No acute cardiopulmonary abnormality.",
              "No evidence of acute disease."]
CXR_OTHER = ["degenerative changes of the thoracic spine", "calcified granuloma {loc}", "tortuous aorta",
             "calcification of the aortic knob", "mild dextroconvex scoliosis", "small hiatal hernia",
             "surgical clips in the right upper quadrant", "elevated {side1} hemidiaphragm",
             "hyperinflated lungs suggestive of chronic obstructive pulmonary disease", "old granulomatous disease"]
CXR_FILLER = ["hilar contours are unremarkable", "the pulmonary vasculature is normal", "the imaged upper abdomen is unremarkable",
              "osseous structures are grossly intact", "there is no free air under the diaphragm",
              "the trachea is midline", "soft tissues are unremarkable"]
CXR_INDICATION = ["shortness of breath", "cough and fever", "chest pain", "evaluate for pneumonia", "hypoxia",
                  "status post line placement, evaluate position", "fall, evaluate for fracture", "preoperative evaluation",
                  "dyspnea on exertion", "evaluate for interval change", "fever, evaluate for infection", "CHF exacerbation"]


# --------------------------------------------------------------------------------------
# CT-RATE
# --------------------------------------------------------------------------------------

CT_SLOTS = {
    "side": ["right", "left", "bilateral"],
    "lobe": ["right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe",
             "lingular segment", "superior segment of the right lower lobe", "posterobasal segment of the left lower lobe"],
    "mm": ["3 mm", "4 mm", "5 mm", "6 mm", "7 mm", "9 mm", "11 mm", "14 mm"],
    "degree": ["mild", "moderate", "marked", "minimal", "significant"],
    "short": ["short axis of 12 mm", "short axis of 15 mm", "short axis of 18 mm", "short axis of 11 mm"],
    "station": ["prevascular", "right paratracheal", "subcarinal", "precarinal", "left hilar", "aorticopulmonary window"],
    "hedge": ["may be compatible with", "is suspicious for", "raises the possibility of", "is nonspecific but may represent"],
}
CT_PHRASES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "Medical material": (
        ["Cardiac pacemaker with leads extending into the right heart chambers is observed.",
         "Sternotomy wires and mediastinal surgical clips are observed.", "A central venous catheter is seen with its tip in the superior vena cava.",
         "A stent is observed in the left anterior descending coronary artery.", "Port catheter is seen on the right."],
        [], ["A linear hyperdense structure is seen in the soft tissue, which {hedge} a catheter fragment."],
    ),
    "Arterial wall calcification": (
        ["Atherosclerotic calcifications are observed in the walls of the thoracic aorta.",
         "{degree} calcific atherosclerotic changes in the aortic arch and descending aorta.",
         "Calcified plaques were observed in the aortic wall."],
        ["No calcific plaque was observed in the aortic wall."],
        ["Slight irregularity of the aortic wall, which {hedge} early atherosclerosis."],
    ),
    "Cardiomegaly": (
        ["Heart size increased.", "The heart is enlarged, with {degree} cardiomegaly.", "Cardiothoracic ratio increased in favour of cardiomegaly."],
        ["Heart size is normal.", "Heart contour and size are normal."],
        ["Heart size is at the upper limit of normal."],
    ),
    "Pericardial effusion": (
        ["Pericardial effusion reaching a thickness of 12 mm was observed.", "{degree} pericardial effusion is present.",
         "Fluid is seen in the pericardial space."],
        ["Pericardial effusion-thickening was not observed.", "No pericardial effusion was detected."],
        ["Minimal pericardial thickening, which {hedge} a small amount of effusion."],
    ),
    "Coronary artery wall calcification": (
        ["Calcific plaques are observed in the coronary arteries.", "{degree} calcifications in the left anterior descending coronary artery.",
         "Coronary artery calcifications are noted in the left main and circumflex arteries."],
        ["No calcification was observed in the coronary arteries."],
        ["Punctate density near the left anterior descending artery, which {hedge} a calcified plaque."],
    ),
    "Hiatal hernia": (
        ["Sliding type hiatal hernia is observed.", "A {degree} hiatal hernia is present at the lower end of the esophagus.",
         "Herniation of the stomach through the esophageal hiatus is seen."],
        ["No hiatal hernia was detected."],
        ["Slight widening of the esophageal hiatus, which {hedge} a small hiatal hernia."],
    ),
    "Lymphadenopathy": (
        ["Lymph nodes with a {short} are observed in the {station} region.", "Enlarged lymph nodes are seen in the mediastinum, the largest in the {station} station.",
         "Pathologically enlarged hilar and mediastinal lymph nodes are present."],
        ["No lymph node in pathological size and appearance was observed in the mediastinum and hilar regions.",
         "Mediastinal and hilar lymph nodes are not enlarged."],
        ["Borderline sized lymph nodes in the {station} region, which {hedge} reactive lymphadenopathy."],
    ),
    "Emphysema": (
        ["Centriacinar emphysematous changes are observed in both lungs.", "{degree} paraseptal emphysema in the upper lobes.",
         "Emphysematous areas and bullae are seen in the apical regions."],
        ["No emphysematous change was observed."],
        ["Areas of slightly decreased attenuation in the upper lobes, which {hedge} early emphysema."],
    ),
    "Atelectasis": (
        ["Subsegmental atelectasis is observed in the {lobe}.", "Linear atelectasis in the {lobe}.",
         "Passive atelectasis is seen adjacent to the effusion in the {lobe}.", "Plate-like atelectatic changes in the {lobe}."],
        ["No atelectasis was seen."],
        ["A linear density in the {lobe}, which {hedge} atelectasis or scarring."],
    ),
    "Lung nodule": (
        ["A {mm} nodule is observed in the {lobe}.", "Millimetric nonspecific nodules are seen in both lungs, the largest {mm} in the {lobe}.",
         "A solid pulmonary nodule measuring {mm} is present in the {lobe}.", "Subpleural nodule of {mm} in the {lobe}."],
        ["No nodular lesion was observed in the lung parenchyma."],
        ["A {mm} density in the {lobe}, which {hedge} a nodule or vessel cross-section."],
    ),
    "Lung opacity": (
        ["Ground glass opacities are observed in the {lobe}.", "Patchy ground-glass densities are seen in both lungs.",
         "Nodular ground glass opacity in the {lobe}.", "Increased density areas are observed in the {lobe}."],
        ["No ground glass opacity was observed."],
        ["Faint density increase in the {lobe}, which {hedge} an early infiltrate."],
    ),
    "Pulmonary fibrotic sequela": (
        ["Fibrotic sequelae are observed in the {lobe}.", "Parenchymal fibrotic bands are seen in the {lobe}.",
         "Sequelae changes with fibrotic densities in both lung apices."],
        [], ["Linear densities in the {lobe}, which {hedge} sequela changes."],
    ),
    "Pleural effusion": (
        ["Pleural effusion reaching a thickness of 25 mm is observed on the {side} side.", "{degree} {side} pleural effusion is seen.",
         "Fluid is observed in the {side} pleural space."],
        ["No pleural effusion was detected.", "Pleural effusion-thickening was not observed."],
        ["Minimal fluid in the {side} costophrenic sinus, which {hedge} a small effusion."],
    ),
    "Mosaic attenuation pattern": (
        ["A mosaic attenuation pattern is observed in both lungs.", "Mosaic perfusion pattern is seen, more prominent in the lower lobes."],
        [], ["Heterogeneous parenchymal attenuation, which {hedge} a mosaic pattern."],
    ),
    "Peribronchial thickening": (
        ["Peribronchial thickening is observed in both lower lobes.", "Bronchial wall thickening is seen in the {lobe}."],
        ["No bronchial wall thickening was observed."],
        ["Slightly prominent bronchial walls, which {hedge} peribronchial thickening."],
    ),
    "Consolidation": (
        ["Consolidation with air bronchograms is observed in the {lobe}.", "A consolidated area is seen in the {lobe}.",
         "Consolidative changes are present in the {lobe}."],
        ["No consolidation was observed in the lung parenchyma."],
        ["A dense area in the {lobe}, which {hedge} consolidation or atelectasis."],
    ),
    "Bronchiectasis": (
        ["Cylindrical bronchiectasis is observed in the {lobe}.", "Traction bronchiectasis is seen in both lower lobes.",
         "Bronchiectatic changes in the {lobe}."],
        [], ["Slightly dilated bronchi in the {lobe}, which {hedge} bronchiectasis."],
    ),
    "Interlobular septal thickening": (
        ["Interlobular septal thickening is observed in both lungs.", "Thickening of the interlobular septa in the {lobe}.",
         "Smooth interlobular septal thickening is seen, predominantly in the lower lobes."],
        [], ["Reticular densities in the {lobe}, which {hedge} septal thickening."],
    ),
}
CT_ORDER = (
    ("mediastinum", ["Medical material", "Cardiomegaly", "Pericardial effusion", "Arterial wall calcification",
                     "Coronary artery wall calcification", "Lymphadenopathy"]),
    ("esophagus", ["Hiatal hernia"]),
    ("lungs", ["Emphysema", "Lung nodule", "Lung opacity", "Consolidation", "Atelectasis", "Pulmonary fibrotic sequela",
               "Mosaic attenuation pattern", "Peribronchial thickening", "Bronchiectasis", "Interlobular septal thickening",
               "Pleural effusion"]),
)
CT_FILLER = {
    "start": ["Trachea and both main bronchi are in the midline and no obstructive pathology is observed in their lumens.",
              "Trachea and main bronchi are open and no occlusive pathology was detected.",
              "The trachea is in the midline and both main bronchi are patent."],
    "mediastinum": ["Mediastinal structures were evaluated as suboptimal since the examination was unenhanced.",
                    "The calibration of the thoracic main vascular structures is natural.",
                    "Thoracic aorta diameter is normal.", "The main pulmonary artery has a normal diameter.",
                    "Thyroid gland dimensions are normal and no nodules were detected.",
                    "No space-occupying lesion was detected in the mediastinum."],
    "esophagus": ["The thoracic esophagus is normal in calibre and no wall thickening was detected.",
                  "Esophagus continuity and wall thickness are natural."],
    "lungs": ["When examined in the lung parenchyma window, the aeration of both lungs is natural.",
              "Both lungs are well ventilated.", "Lung hila are natural.",
              "No mass lesion with distinguishable borders was detected in the lung parenchyma."],
    "abdomen": ["In the sections passing through the upper abdomen, the liver and spleen are of normal size and density.",
                "No space-occupying lesion was detected in the upper abdominal organs included in the sections.",
                "Both adrenal glands are normal.", "The gallbladder is natural in the sections included.",
                "Hypodense cyst in the liver measuring 10 mm.", "A simple cortical cyst in the left kidney.",
                "Gallstones are seen in the gallbladder lumen.", "Fatty liver changes are observed."],
    "bones": ["Degenerative changes are observed in the thoracic vertebrae.", "No lytic or destructive lesion was detected in the bone structures.",
              "Osteophytes are seen at the anterior margins of the thoracic vertebrae.",
              "Bone structures in the study area are natural.", "Schmorl nodules are observed in several vertebrae."],
}
CT_IMPRESSION = {
    "Medical material": ["Postoperative changes and medical material.", "Pacemaker leads.", "Central catheter in place."],
    "Arterial wall calcification": ["Aortic atherosclerosis.", "Atherosclerotic changes in the aorta."],
    "Cardiomegaly": ["Cardiomegaly."], "Pericardial effusion": ["Pericardial effusion."],
    "Coronary artery wall calcification": ["Coronary artery calcifications.", "Coronary atherosclerosis."],
    "Hiatal hernia": ["Hiatal hernia."], "Lymphadenopathy": ["Mediastinal lymphadenopathy.", "Lymph nodes of pathological size in the mediastinum."],
    "Emphysema": ["Emphysema.", "Emphysematous changes in both lungs."], "Atelectasis": ["Atelectasis in the {lobe}.", "Subsegmental atelectasis."],
    "Lung nodule": ["Nonspecific pulmonary nodules.", "Pulmonary nodule in the {lobe}; follow-up is recommended."],
    "Lung opacity": ["Ground-glass opacities, an infectious process should be considered clinically.", "Ground glass densities in both lungs."],
    "Pulmonary fibrotic sequela": ["Fibrotic sequelae.", "Sequela changes in both lungs."], "Pleural effusion": ["Pleural effusion.", "{side} pleural effusion."],
    "Mosaic attenuation pattern": ["Mosaic attenuation pattern, small airway disease?"], "Peribronchial thickening": ["Peribronchial thickening."],
    "Consolidation": ["Consolidation in the {lobe}, pneumonia should be considered.", "Pneumonic consolidation."],
    "Bronchiectasis": ["Bronchiectasis."], "Interlobular septal thickening": ["Interlobular septal thickening."],
}
CT_CLINICAL = ["Cough and shortness of breath.", "Fever.", "Follow-up of known pulmonary nodule.", "Chest pain.",
               "Malignancy screening.", "Dyspnea.", "Trauma.", "Preoperative evaluation.", "COVID-19 suspicion."]
