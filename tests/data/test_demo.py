from pathlib import Path

import pytest
import soundfile as sf

from pipeline.data.demo import INSTALL_HINT, MissingPackagesError, find_recordings

SOUND = Path("/usr/share/games/fillets-ng/sound")


def test_speakers_come_from_role_marker_and_language_folder():
    listing = {
        "cs": [SOUND / "airplane/cs/let-m-oko.ogg", SOUND / "airplane/cs/let-v-oko.ogg",
               SOUND / "airplane/cs/let-x-pilot.ogg"],
        "nl": [SOUND / "airplane/nl/let-m-oko.ogg", SOUND / "airplane/cs/other-m-file.ogg"],
    }
    found = {(f.source.name, f.speaker) for f in find_recordings(listing)}
    # minor characters (no -m-/-v-) and files outside the language folder are left out
    assert found == {("let-m-oko.ogg", "cs-m"), ("let-v-oko.ogg", "cs-v"), ("let-m-oko.ogg", "nl-m")}


def test_missing_package_error_says_how_to_install():
    with pytest.raises(MissingPackagesError, match="fillets-ng-data-nl") as err:
        find_recordings({"cs": [SOUND / "airplane/cs/let-m-oko.ogg"], "nl": []})
    assert INSTALL_HINT in str(err.value)


def test_demo_dataset_is_four_speakers_of_mono_16k_speech(speech_dir):
    speakers = sorted(p.name for p in speech_dir.iterdir() if p.is_dir())
    assert speakers == ["cs-m", "cs-v", "nl-m", "nl-v"]
    for speaker in speakers:
        files = sorted((speech_dir / speaker).glob("*.wav"))
        assert files
        info = sf.info(str(files[0]))
        assert (info.samplerate, info.channels) == (16000, 1)
        samples, _ = sf.read(str(files[0]))
        assert abs(samples).max() > 0.01  # real speech, not silence
    assert (speech_dir / "SOURCES.csv").read_text().startswith("file,speaker,source,skipped")
