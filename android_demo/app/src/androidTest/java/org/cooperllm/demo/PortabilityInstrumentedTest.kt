package org.cooperllm.demo

import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.cooperllm.core.PortabilityCheck
import org.junit.Assert.assertEquals
import org.junit.Test
import org.junit.runner.RunWith

/**
 * On a device or emulator (`./gradlew :app:connectedAndroidTest`): ART reproduces the golden perturbations, the three
 * kinds of direction and the round replays of docs/PERTURBATIONS.md bit for bit, as the JVM does in
 * tests/test_android_core.py.
 */
@RunWith(AndroidJUnit4::class)
class PortabilityInstrumentedTest {
    @Test
    fun goldenVectorsMatchOnThisDevice() {
        val context = InstrumentationRegistry.getInstrumentation().targetContext
        val text = context.assets.open(DeviceHolder.GOLDEN_ASSET).use { String(it.readBytes(), Charsets.UTF_8) }
        assertEquals(emptyList<String>(), PortabilityCheck.verify(text))
    }
}
