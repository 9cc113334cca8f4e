#include "synth/corpus.h"

namespace epwa {

std::string_view SynthTokenizerCorpus() {
  // Written for epwa; released with the project under its licence.
  static constexpr std::string_view kText = R"TEXT(Once upon a time there was a small village at the edge of a great forest. The people of the village worked in the fields during the day and told stories by the fire at night. One of the stories was about an old clock in the square that had stopped many years before. Nobody knew who had built it, and nobody knew why it had stopped.
A girl named Mira lived with her grandmother in the last house on the road. She was curious about everything: the shape of the clouds, the songs of the birds, the way the river changed its colour in the autumn. Every morning she walked past the clock and looked at its still hands. "Why does it not move?" she asked her grandmother one evening. "Some things wait for the right person," her grandmother answered, and she would say no more.
The next morning Mira climbed the narrow stairs inside the tower. The air smelled of dust and old wood. At the top she found a room full of wheels, springs and chains. A large brass wheel had slipped from its place, and a small bird had built a nest between the teeth of the gears. Mira moved the nest carefully to a shelf by the window, lifted the wheel back onto its axle, and turned the key that stood in the side of the machine.
With a long, low sound the clock began to tick. Down in the square the people stopped and looked up. The hands moved for the first time in forty years, and the bell rang twelve times although it was only nine in the morning. Everyone laughed, and the baker gave Mira a warm loaf of bread.
From that day on Mira kept the clock. She learned how to oil the chains, how to set the hands by the sun, and how to listen for the small changes in its voice that meant something needed care. When she grew old she taught a boy from the village to do the same, and the clock has not stopped since.

How a computer reads a book
A computer does not read words the way people do. It sees numbers. Before a language model can read a sentence, a tokenizer cuts the text into pieces and gives each piece a number. Common words such as "the", "and" or "time" usually become a single piece. Rare words are split into smaller parts, and anything the tokenizer has never seen can always be written as raw bytes, so no text is ever lost.
The model then turns each number into a vector, passes the vectors through many layers, and produces a score for every piece in its vocabulary. The highest scores are the most likely next pieces. By choosing one piece, adding it to the text, and repeating, the model writes a sentence one piece at a time.
In a mixture of experts, each layer holds several small networks called experts. A router looks at every piece and chooses which experts should work on it. Only a few experts run for each piece, so the model can be large while each step stays fast. The choices of the router form a pathway through the model, and that pathway can be used to mark the text that the model writes.

Notes from a garden
March 3. The ground is still cold, but the first green leaves of the garlic are showing. I cleared the old stems from the beds and spread a thin layer of compost.
March 18. Rain for four days. The path between the beds has turned to mud. I planted peas along the fence and covered them with a net to keep the birds away.
April 9. The peas are up. Sowed carrots, radishes and two rows of lettuce. The apple tree is in flower and the bees are busy from morning to evening.
May 2. Warm at last. Planted out the tomatoes, twelve plants in all, and the beans. Weeded everything. The radishes are ready; we ate the first of them with bread and butter.
June 21. The longest day of the year. Picked strawberries before breakfast and again after dinner. The tomatoes need tying up; some of them are taller than the sticks.

Questions and answers
What is the capital of France? Paris is the capital of France.
How many days are there in a week? There are seven days in a week: Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.
Why is the sky blue? Sunlight is scattered by the air, and blue light is scattered more than red light, so the sky looks blue.
What do plants need to grow? They need light, water, air and food from the soil.
Which number comes after 99? The number 100 comes after 99, and 1,000 comes after 999.

A short letter
Dear Sam,
Thank you for your letter and for the photographs of the mountains. It looks like you had a wonderful time, even with the snow in June! We are all well here. The children started school again last week and they are already asking when the next holiday will be. The weather has been mild, so we have been walking by the lake most evenings.
Please write again soon, and tell us when you will come to visit. There is always a room for you here.
With love,
Anna
)TEXT";
  return kText;
}

}  // namespace epwa
